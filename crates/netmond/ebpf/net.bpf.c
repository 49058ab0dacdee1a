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

SEC("tp_btf/inet_sock_set_state")
int handle_set_state(u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];
	struct task_struct *t;
	struct net_event *e;
	struct socket *sock;
	u16 family, protocol;
	u64 id;

	protocol = sk->sk_protocol;
	family = sk->__sk_common.skc_family;
	if (protocol != IPPROTO_TCP || (family != AF_INET && family != AF_INET6))
		return 0;

	count(COUNTER_PRODUCED);
	e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_DROPPED);
		return 0;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->skaddr = (u64)sk;
	e->cookie = bpf_get_socket_cookie(sk);
	e->family = family;
	e->protocol = protocol;
	e->oldstate = (u8)oldstate;
	e->newstate = (u8)newstate;
	e->flags = sk->sk_lock.owned ? F_TASK : 0;
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
	sock = sk->sk_socket;
	if (sock && sock->file)
		e->inode = sock->file->f_inode->i_ino;

	id = bpf_get_current_pid_tgid();
	e->pid = (u32)id;
	e->tgid = (u32)(id >> 32);
	e->uid = (u32)bpf_get_current_uid_gid();
	t = bpf_get_current_task_btf();
	e->start_ns = t->group_leader->start_boottime;
	bpf_probe_read_kernel(e->comm, COMM_LEN, t->comm);

	bpf_ringbuf_submit(e, 0);
	return 0;
}
