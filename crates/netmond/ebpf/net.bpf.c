/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * netmond's eBPF tier: one record per TCP state change (connect, accept,
 * listen, close), from the BTF tracepoint sock:inet_sock_set_state (no
 * kprobes), out through one ring buffer.
 *
 * Record layout (little endian) is `struct net_event`; decode.rs reads it
 * and must be kept in step (RECORD_SIZE there).
 *
 * Who did it: the tracepoint runs wherever the kernel changes the state.
 * connect(), listen(), close() and shutdown() change it with the socket
 * locked by the calling process (lock_sock: sk_lock.owned set), so the
 * current task is that process, and F_TASK says so. A handshake completed
 * by a packet (the client's SYN_SENT -> ESTABLISHED, an accepted
 * connection's SYN_RECV -> ESTABLISHED), a peer's FIN or RST and the
 * timers run in softirq: the current task is whoever the CPU interrupted,
 * and F_TASK is clear (the task fields are then not the socket's owner's).
 *
 * Accounting (accounting.h, shared): COUNTERS[0] counts every record this
 * program tried to send, COUNTERS[1] every one the ring buffer had no room
 * for. So, per CPU and in total, produced = delivered + dropped, exactly.
 *
 * Build: cargo xtask ebpf (clang -O2 -g -target bpf -D__TARGET_ARCH_x86).
 */
#include "vmlinux.h"
#include "helpers.h"
#include "accounting.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define COMM_LEN 16

/* net_event.flags */
#define F_TASK 0x1 /* the current task acted on the socket (see above) */
#define F_ACCEPTED 0x2 /* not a state change: the task accepted the socket */

struct net_event {
	u64 ts_ns;    /* CLOCK_MONOTONIC */
	u64 skaddr;   /* the struct sock: one connection while it lives */
	u64 cookie;   /* the socket cookie, as sock_diag reports it */
	u64 start_ns; /* the current task's group leader's start_boottime */
	u64 inode;    /* the socket's inode (0: no struct socket yet, as accepted ones) */
	u32 netns;    /* the network namespace's inode */
	u32 pid;      /* current thread id */
	u32 tgid;     /* current process id */
	u32 uid;      /* current real uid */
	u32 sk_uid;   /* the socket's uid (sock_diag's) */
	u16 family;
	u16 protocol;
	u16 sport;    /* host order */
	u16 dport;    /* host order */
	u8 oldstate;
	u8 newstate;
	u8 flags;
	u8 _pad;
	u8 saddr[16]; /* IPv4 in the first 4 bytes */
	u8 daddr[16];
	char comm[COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Bytes; the loader may set another power of two of pages. */
	__uint(max_entries, 1024 * 1024);
} EVENTS SEC(".maps");

/* GPL-compatible, as the kernel requires of programs using its GPL-only
 * helpers; MIT beside it, to fit the Apache-2.0 code that loads it. */
char LICENSE[] SEC("license") = "Dual MIT/GPL";

static __always_inline u16 swap16(u16 v)
{
	return (u16)((v >> 8) | (v << 8));
}

/* The socket's fields of a record: addresses, ports, namespace, uid,
 * cookie and inode (0 when no file holds the socket yet). */
static __always_inline void fill_socket(struct net_event *e, struct sock *sk,
					struct socket *sock, u16 family,
					u16 protocol)
{
	e->ts_ns = bpf_ktime_get_ns();
	e->skaddr = (u64)sk;
	e->cookie = bpf_get_socket_cookie(sk);
	e->family = family;
	e->protocol = protocol;
	e->_pad = 0;
	e->sport = sk->__sk_common.skc_num;
	e->dport = swap16(sk->__sk_common.skc_dport);
	e->netns = sk->__sk_common.skc_net.net->ns.inum;
	e->sk_uid = sk->sk_uid.val;
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == AF_INET) {
		bpf_probe_read_kernel(e->saddr, 4, &sk->__sk_common.skc_rcv_saddr);
		bpf_probe_read_kernel(e->daddr, 4, &sk->__sk_common.skc_daddr);
	} else {
		bpf_probe_read_kernel(e->saddr, 16, &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_probe_read_kernel(e->daddr, 16, &sk->__sk_common.skc_v6_daddr);
	}
	e->inode = 0;
	if (sock && sock->file)
		e->inode = sock->file->f_inode->i_ino;
}

/* The current task's fields of a record. */
static __always_inline void fill_task(struct net_event *e)
{
	struct task_struct *t;
	u64 id;

	id = bpf_get_current_pid_tgid();
	e->pid = (u32)id;
	e->tgid = (u32)(id >> 32);
	e->uid = (u32)bpf_get_current_uid_gid();
	t = bpf_get_current_task_btf();
	e->start_ns = t->group_leader->start_boottime;
	bpf_probe_read_kernel(e->comm, COMM_LEN, t->comm);
}

static __always_inline bool is_inet_tcp(u16 family, u16 protocol)
{
	return protocol == IPPROTO_TCP && (family == AF_INET || family == AF_INET6);
}

SEC("tp_btf/inet_sock_set_state")
int handle_set_state(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];
	struct net_event *e;
	u16 family, protocol;

	protocol = sk->sk_protocol;
	family = sk->__sk_common.skc_family;
	if (!is_inet_tcp(family, protocol))
		return 0;

	count(COUNTER_PRODUCED);
	e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_DROPPED);
		return 0;
	}
	fill_socket(e, sk, sk->sk_socket, family, protocol);
	e->oldstate = (u8)oldstate;
	e->newstate = (u8)newstate;
	e->flags = sk->sk_lock.owned ? F_TASK : 0;
	fill_task(e);

	bpf_ringbuf_submit(e, 0);
	return 0;
}

/*
 * accept(): which process took the connection. The kernel here refuses
 * every trampoline program (fexit on inet_csk_accept and the BPF LSM hook
 * sock_graft both fail to load with EPERM, measured on 6.18), so this is
 * the exit of accept() and accept4(), by their syscall tracepoints where
 * tracefs is mounted (the loader finds them there), else by the BTF
 * tracepoint raw_syscalls:sys_exit filtered at once to those two: in the
 * accepting process, the descriptor returned leads through the task's
 * table to the accepted socket. One
 * F_ACCEPTED record: the socket's cookie, inode, addresses and ports, the
 * acceptor as the task, and no state (0 -> 0: not a state change).
 *
 * Not seen: io_uring's accept (no syscall returns the descriptor) and
 * 32-bit compat callers (socketcall); their connections keep the
 * listener's holder (realtime.rs).
 */
#define NR_ACCEPT 43   /* x86_64 */
#define NR_ACCEPT4 288 /* x86_64 */

/* Kernel types only this program reads, or fields of the shared
 * vmlinux.h's types it does not list (the ___net flavours: CO-RE matches
 * them to the kernel's types of the name before ___). */
struct pt_regs {
	long unsigned int orig_ax;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct___net {
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct file___net {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct socket___net {
	struct sock *sk;
} __attribute__((preserve_access_index));

typedef struct {
	s64 counter;
} atomic64_t___net;

struct sock_common___net {
	atomic64_t___net skc_cookie;
} __attribute__((preserve_access_index));

#define READ(dst, src) \
	bpf_probe_read_kernel(&(dst), sizeof(dst), __builtin_preserve_access_index(&(src)))

/* The struct sock behind descriptor fd of the current task, and the inode
 * of its file; NULL when any step fails. */
static __always_inline struct sock *sock_of_fd(u32 fd, u64 *inode)
{
	struct task_struct___net *t = (void *)bpf_get_current_task_btf();
	struct files_struct *files = 0;
	struct fdtable *fdt = 0;
	struct file **fds = 0;
	struct file___net *file = 0;
	struct socket___net *sock = 0;
	struct inode *ino = 0;
	struct sock *sk = 0;
	unsigned int max = 0;

	if (READ(files, t->files) || !files || READ(fdt, files->fdt) || !fdt)
		return 0;
	if (READ(max, fdt->max_fds) || fd >= max || READ(fds, fdt->fd) || !fds)
		return 0;
	if (bpf_probe_read_kernel(&file, sizeof(file), &fds[fd]) || !file)
		return 0;
	if (READ(sock, file->private_data) || !sock || READ(sk, sock->sk))
		return 0;
	if (!READ(ino, file->f_inode) && ino)
		READ(*inode, ino->i_ino);
	return sk;
}

/* The record of an accept() that returned ret, in the accepting process. */
static __always_inline int on_accept_exit(long ret)
{
	struct sock_common___net *skc;
	struct net_event *e;
	struct sock *sk;
	u16 family = 0, protocol = 0;
	u64 inode = 0;
	s64 cookie = 0;

	if (ret < 0)
		return 0;
	sk = sock_of_fd((u32)ret, &inode);
	if (!sk)
		return 0;
	/* A descriptor accept() made is a socket; its file's private_data is
	 * its struct socket, whose sk this is. Only TCP over IP goes on. */
	if (READ(protocol, sk->sk_protocol) || READ(family, sk->__sk_common.skc_family))
		return 0;
	if (!is_inet_tcp(family, protocol))
		return 0;
	skc = (void *)sk;
	READ(cookie, skc->skc_cookie.counter);

	count(COUNTER_PRODUCED);
	e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_DROPPED);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->skaddr = (u64)sk;
	/* Made by the state program's bpf_get_socket_cookie at the handshake:
	 * 0 only for a connection established before netmond started. */
	e->cookie = (u64)cookie;
	e->inode = inode;
	e->family = family;
	e->protocol = protocol;
	e->oldstate = 0;
	e->newstate = 0;
	e->flags = F_TASK | F_ACCEPTED;
	e->_pad = 0;
	e->sport = 0;
	e->dport = 0;
	e->netns = 0;
	e->sk_uid = 0;
	READ(e->sport, sk->__sk_common.skc_num);
	READ(e->dport, sk->__sk_common.skc_dport);
	e->dport = swap16(e->dport);
	READ(e->sk_uid, sk->sk_uid.val);
	{
		struct net *net = 0;

		if (!READ(net, sk->__sk_common.skc_net.net) && net)
			READ(e->netns, net->ns.inum);
	}
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	if (family == AF_INET) {
		READ(*(u32 *)e->saddr, sk->__sk_common.skc_rcv_saddr);
		READ(*(u32 *)e->daddr, sk->__sk_common.skc_daddr);
	} else {
		READ(e->saddr, sk->__sk_common.skc_v6_rcv_saddr);
		READ(e->daddr, sk->__sk_common.skc_v6_daddr);
	}
	fill_task(e);

	bpf_ringbuf_submit(e, 0);
	return 0;
}

/* The syscall tracepoints' record (the format file of
 * events/syscalls/sys_exit_accept4; its layout is UAPI-stable). */
struct syscall_exit_ctx {
	u64 common;
	s32 syscall_nr;
	s32 _pad;
	s64 ret;
};

/* Where tracefs is mounted (the source's choice, AcceptHook::Tracepoints):
 * only accept() and accept4() run a program. */
SEC("tracepoint/syscalls/sys_exit_accept4")
int handle_accept4_exit(struct syscall_exit_ctx *ctx)
{
	return on_accept_exit(ctx->ret);
}

SEC("tracepoint/syscalls/sys_exit_accept")
int handle_accept_exit(struct syscall_exit_ctx *ctx)
{
	return on_accept_exit(ctx->ret);
}

/* Without tracefs (AcceptHook::RawSyscalls): every syscall's exit, left at
 * once unless it is accept() or accept4(). */
SEC("tp_btf/sys_exit")
int handle_sys_exit(u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long unsigned int nr = regs->orig_ax;

	if (nr != NR_ACCEPT && nr != NR_ACCEPT4)
		return 0;
	return on_accept_exit((long)ctx[1]);
}
