/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * procmond's eBPF tier: one record per new process, exec and process exit,
 * from BTF tracepoints (no kprobes), out through one ring buffer.
 *
 * Record layout (little endian) is `struct event`, and for an exec
 * `struct exec_event` cut after `argv_len` bytes of argv; decode.rs reads it
 * and must be kept in step (EVENT_SIZE, EXEC_FIXED_SIZE there).
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

#define EV_EXEC 1
#define EV_FORK 2
#define EV_EXIT 3

/* exec_event.flags */
#define F_ARGV_TRUNCATED 0x1     /* argv longer than ARGV_MAX: a prefix */
#define F_FILENAME_TRUNCATED 0x2 /* filename longer than FILENAME_MAX_LEN - 1 */
#define F_SETUID 0x4             /* the set-user-ID bit changed the euid */
#define F_SETGID 0x8             /* the set-group-ID bit changed the egid */
#define F_ARGV_UNREADABLE 0x10   /* reading the new stack's argv failed */
#define F_EXE_TRUNCATED 0x20     /* exe path deeper or longer than we walk */
#define F_EXE_UNLINKED 0x40      /* the executable has no name left (deleted, memfd) */

#define ARGV_MAX 4096
#define EXE_MAX 1024     /* the resolved executable path, NUL excluded */
#define PATH_DEPTH 40    /* path components walked, mount crossings included */
#define NAME_MAX_LEN 255
#define FILENAME_MAX_LEN 512
#define COMM_LEN 16

#define S_ISUID 04000
#define S_ISGID 02000
#define SIGNAL_GROUP_EXIT 0x00000004

struct event {
	u32 kind;
	u32 flags;
	u32 pid;   /* thread id */
	u32 tgid;  /* process id */
	u32 ppid;  /* real parent's process id */
	u32 uid;
	u32 euid;
	u32 gid;
	u32 egid;
	s32 exit_code;  /* raw wait status (EV_EXIT) */
	u64 ts_ns;      /* CLOCK_MONOTONIC */
	u64 start_ns;   /* the group leader's start_boottime: /proc's starttime */
	char comm[COMM_LEN];
};

struct exec_event {
	struct event h;
	u32 argc;         /* bprm->argc: how many arguments the kernel counted */
	u32 argv_len;     /* bytes of argv below */
	u32 filename_len; /* bytes of filename, without the NUL */
	u32 old_pid;      /* the thread id before exec (a thread that exec'd) */
	u32 exe_len;      /* bytes of exe */
	u32 _pad;
	char filename[FILENAME_MAX_LEN];
	char exe[EXE_MAX]; /* the executable's path, from the opened file */
	char argv[ARGV_MAX];
};

/* Scratch for building the executable's path backwards. */
struct path_buf {
	char buf[EXE_MAX + NAME_MAX_LEN + 2];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	/* Bytes; the loader may set another power of two of pages. */
	__uint(max_entries, 4 * 1024 * 1024);
} EVENTS SEC(".maps");

/* An exec record is too big for the 512-byte stack: built here, then copied. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct exec_event);
} SCRATCH SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct path_buf);
} PATHS SEC(".maps");

/* GPL-compatible, as the kernel requires of programs using its GPL-only
 * helpers; MIT beside it, to fit the Apache-2.0 code that loads it. */
char LICENSE[] SEC("license") = "Dual MIT/GPL";

/* The byte offset of a field on the running kernel (CO-RE). */
#define FIELD_OFFSET(type, field) __builtin_preserve_field_info(((type *)0)->field, 0)

static __always_inline u64 read_u64(u64 addr)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), (const void *)addr);
	return v;
}

/*
 * The path of the executable's opened file, as d_path would give it from
 * the global root: walks d_parent up to each mount's root, then crosses to
 * the mount point in the parent mount. Written backwards into a scratch
 * buffer, then copied to e->exe. The bound (PATH_DEPTH components, EXE_MAX
 * bytes) is flagged when hit.
 */
static __always_inline void resolve_exe(struct exec_event *e, struct file *f)
{
	struct path_buf *pb;
	u32 zero = 0, off = EXE_MAX, len;
	u64 dentry, vfsmnt, mnt, parent, root, name, file_dentry;
	bool done = false;

	e->exe_len = 0;
	pb = bpf_map_lookup_elem(&PATHS, &zero);
	if (!pb)
		return;
	dentry = (u64)f->f_path.dentry;
	file_dentry = dentry;
	vfsmnt = (u64)f->f_path.mnt;
	mnt = vfsmnt - FIELD_OFFSET(struct mount, mnt);

	for (int i = 0; i < PATH_DEPTH; i++) {
		root = read_u64(vfsmnt + FIELD_OFFSET(struct vfsmount, mnt_root));
		if (dentry == root) {
			parent = read_u64(mnt + FIELD_OFFSET(struct mount, mnt_parent));
			if (parent == mnt || parent == 0) {
				done = true;
				break;
			}
			dentry = read_u64(mnt + FIELD_OFFSET(struct mount, mnt_mountpoint));
			mnt = parent;
			vfsmnt = mnt + FIELD_OFFSET(struct mount, mnt);
			continue;
		}
		parent = read_u64(dentry + FIELD_OFFSET(struct dentry, d_parent));
		if (parent == dentry || parent == 0) {
			done = true;
			break;
		}
		len = 0;
		bpf_probe_read_kernel(&len, sizeof(len),
				      (const void *)(dentry + FIELD_OFFSET(struct dentry, d_name.len)));
		name = read_u64(dentry + FIELD_OFFSET(struct dentry, d_name.name));
		if (len > NAME_MAX_LEN)
			len = NAME_MAX_LEN;
		if (len + 1 > off)
			break;
		off -= len + 1;
		off &= EXE_MAX - 1;
		pb->buf[off] = '/';
		asm volatile("%[len] &= 0xff" : [len] "+r"(len));
		bpf_probe_read_kernel(&pb->buf[off + 1], len, (const void *)name);
		dentry = parent;
	}
	if (!done)
		e->h.flags |= F_EXE_TRUNCATED;
	len = EXE_MAX - off;
	if (len == 0) {
		/* The file is the root of a mount nothing else reaches (a memfd,
		 * on the kernel's internal shmem mount): "/" and its own name,
		 * as d_path's "/memfd:NAME" without " (deleted)". */
		len = 0;
		bpf_probe_read_kernel(&len, sizeof(len),
				      (const void *)(file_dentry + FIELD_OFFSET(struct dentry, d_name.len)));
		name = read_u64(file_dentry + FIELD_OFFSET(struct dentry, d_name.name));
		if (len > NAME_MAX_LEN)
			len = NAME_MAX_LEN;
		asm volatile("%[len] &= 0xff" : [len] "+r"(len));
		e->exe[0] = '/';
		e->exe_len = 1;
		if (bpf_probe_read_kernel(&e->exe[1], len, (const void *)name) == 0)
			e->exe_len = 1 + len;
		return;
	}
	asm volatile("%[len] &= 0x7ff" : [len] "+r"(len));
	if (len > EXE_MAX)
		return;
	off &= EXE_MAX - 1;
	if (bpf_probe_read_kernel(e->exe, len, &pb->buf[off]) == 0)
		e->exe_len = len;
}

static __always_inline void fill(struct event *e, u32 kind, struct task_struct *t)
{
	const struct cred *cred = t->cred;

	e->kind = kind;
	e->flags = 0;
	e->pid = t->pid;
	e->tgid = t->tgid;
	e->ppid = t->real_parent->tgid;
	e->uid = cred->uid.val;
	e->euid = cred->euid.val;
	e->gid = cred->gid.val;
	e->egid = cred->egid.val;
	e->exit_code = 0;
	e->ts_ns = bpf_ktime_get_ns();
	e->start_ns = t->group_leader->start_boottime;
	bpf_probe_read_kernel(e->comm, COMM_LEN, t->comm);
}

/* A small record (fork, exit), reserved in the ring buffer directly. */
static __always_inline int send_small(u32 kind, struct task_struct *t, s32 exit_code)
{
	struct event *e;

	count(COUNTER_PRODUCED);
	e = bpf_ringbuf_reserve(&EVENTS, sizeof(*e), 0);
	if (!e) {
		count(COUNTER_DROPPED);
		return 0;
	}
	fill(e, kind, t);
	e->exit_code = exit_code;
	bpf_ringbuf_submit(e, 0);
	return 0;
}

SEC("tp_btf/sched_process_fork")
int handle_fork(u64 *ctx)
{
	struct task_struct *child = (struct task_struct *)ctx[1];

	/* A new thread is not a new process. */
	if (child->pid != child->tgid)
		return 0;
	return send_small(EV_FORK, child, 0);
}

SEC("tp_btf/sched_process_exit")
int handle_exit(u64 *ctx)
{
	struct task_struct *t = (struct task_struct *)ctx[0];
	struct signal_struct *sig = t->signal;
	s32 code;

	/* do_exit decrements signal->live before this tracepoint: zero means
	 * the last thread of the process is leaving, so the process ends. */
	if (sig->live.counter != 0)
		return 0;
	code = (sig->flags & SIGNAL_GROUP_EXIT) ? sig->group_exit_code : t->exit_code;
	return send_small(EV_EXIT, t, code);
}

SEC("tp_btf/sched_process_exec")
int handle_exec(u64 *ctx)
{
	struct task_struct *t = (struct task_struct *)ctx[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx[2];
	struct inode *inode;
	struct exec_event *e;
	u32 zero = 0;
	u64 start, end, len, size;
	long n;
	char last;

	e = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!e)
		return 0;
	fill(&e->h, EV_EXEC, t);
	e->old_pid = (u32)ctx[1];
	e->argc = bprm->argc;

	/* The set-id bits, when they took effect: the new effective id is the
	 * file's owner and differs from the real id. */
	inode = bprm->file->f_inode;
	if (inode->i_nlink == 0)
		e->h.flags |= F_EXE_UNLINKED;
	if ((inode->i_mode & S_ISUID) && e->h.euid == inode->i_uid.val && e->h.euid != e->h.uid)
		e->h.flags |= F_SETUID;
	if ((inode->i_mode & S_ISGID) && e->h.egid == inode->i_gid.val && e->h.egid != e->h.gid)
		e->h.flags |= F_SETGID;

	resolve_exe(e, bprm->file);

	/* The filename as executed (the path given to execve, or /dev/fd/N). */
	n = bpf_probe_read_kernel_str(e->filename, FILENAME_MAX_LEN, bprm->filename);
	if (n <= 0) {
		e->filename_len = 0;
	} else {
		e->filename_len = (u32)n - 1;
		if (n == FILENAME_MAX_LEN) {
			/* Full: truncated unless the string ended exactly there. */
			last = 1;
			bpf_probe_read_kernel(&last, 1, bprm->filename + FILENAME_MAX_LEN - 1);
			if (last != 0)
				e->h.flags |= F_FILENAME_TRUNCATED;
		}
	}

	/* argv: the NUL-separated strings exec just copied to the new stack. */
	start = t->mm->arg_start;
	end = t->mm->arg_end;
	len = end > start ? end - start : 0;
	if (len > ARGV_MAX) {
		len = ARGV_MAX;
		e->h.flags |= F_ARGV_TRUNCATED;
	}
	/* Keeps the verifier's bound on len through the call. */
	asm volatile("%[len] &= 0x1fff" : [len] "+r"(len));
	if (len > ARGV_MAX)
		len = ARGV_MAX;
	if (len > 0 && bpf_probe_read_user(e->argv, len, (const void *)start) != 0) {
		len = 0;
		e->h.flags |= F_ARGV_UNREADABLE;
	}
	e->argv_len = len;

	count(COUNTER_PRODUCED);
	size = sizeof(*e) - ARGV_MAX + len;
	if (bpf_ringbuf_output(&EVENTS, e, size, 0) != 0)
		count(COUNTER_DROPPED);
	return 0;
}
