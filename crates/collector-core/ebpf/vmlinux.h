/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The kernel types the workspace's eBPF programs (procmond's process.bpf.c,
 * netmond's net.bpf.c) read, trimmed from
 *   bpftool btf dump file /sys/kernel/btf/vmlinux format c
 * (Linux 6.18) to the fields they use. Field names and types are the
 * kernel's; offsets are not: every struct is preserve_access_index, so the
 * loader relocates each access against the running kernel's BTF (CO-RE).
 * A field missing on the running kernel fails the load, naming it.
 */
#ifndef __VMLINUX_H__
#define __VMLINUX_H__

typedef unsigned char __u8;
typedef short unsigned int __u16;
typedef int __s32;
typedef unsigned int __u32;
typedef long long int __s64;
typedef long long unsigned int __u64;
typedef __u8 u8;
typedef __u16 u16;
typedef __s32 s32;
typedef __u32 u32;
typedef __s64 s64;
typedef __u64 u64;
typedef _Bool bool;
typedef int pid_t;
typedef __u32 uid_t;
typedef __u32 gid_t;
typedef short unsigned int umode_t;
typedef __u16 __be16;
typedef __u32 __be32;

enum {
	false = 0,
	true = 1,
};

/* UAPI map types used (include/uapi/linux/bpf.h). */
enum bpf_map_type {
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_RINGBUF = 27,
};

#pragma clang attribute push (__attribute__((preserve_access_index)), apply_to = record)

typedef struct {
	int counter;
} atomic_t;

typedef struct {
	uid_t val;
} kuid_t;

typedef struct {
	gid_t val;
} kgid_t;

struct cred {
	kuid_t uid;
	kgid_t gid;
	kuid_t euid;
	kgid_t egid;
};

/* arg_start/arg_end sit in an anonymous struct in the kernel's mm_struct;
 * the relocation finds them through it. */
struct mm_struct {
	long unsigned int arg_start;
	long unsigned int arg_end;
};

struct signal_struct {
	atomic_t live;
	int group_exit_code;
	unsigned int flags;
};

struct inode {
	umode_t i_mode;
	long unsigned int i_ino;
	unsigned int i_nlink;
	kuid_t i_uid;
	kgid_t i_gid;
};

/* d_name.len sits in an anonymous struct in an anonymous union (and
 * d_name itself in an anonymous union since 6.15); relocations find it. */
struct qstr {
	u32 len;
	const unsigned char *name;
};

struct dentry {
	struct dentry *d_parent;
	struct qstr d_name;
};

struct vfsmount {
	struct dentry *mnt_root;
};

struct mount {
	struct mount *mnt_parent;
	struct dentry *mnt_mountpoint;
	struct vfsmount mnt;
};

struct path {
	struct vfsmount *mnt;
	struct dentry *dentry;
};

struct file {
	struct path f_path;
	struct inode *f_inode;
};

struct task_struct {
	struct mm_struct *mm;
	int exit_code;
	pid_t pid;
	pid_t tgid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	u64 start_boottime;
	const struct cred *cred;
	char comm[16];
	struct signal_struct *signal;
};

struct linux_binprm {
	struct file *file;
	int argc;
	const char *filename;
};

/* The network types net.bpf.c reads. The address and port pairs sit in
 * anonymous unions and structs of sock_common; relocations find them. */
struct in6_addr {
	u8 s6_addr[16];
};

struct ns_common {
	unsigned int inum;
};

struct net {
	struct ns_common ns;
};

typedef struct {
	struct net *net;
} possible_net_t;

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	u16 skc_num;
	short unsigned int skc_family;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
};

/* Set while a process holds the socket's lock (lock_sock): the kernel is
 * acting for a syscall of that process, not in softirq or a timer. */
typedef struct {
	int owned;
} socket_lock_t;

struct socket {
	struct file *file;
};

struct sock {
	struct sock_common __sk_common;
	socket_lock_t sk_lock;
	struct socket *sk_socket;
	u16 sk_protocol;
	kuid_t sk_uid;
};

#pragma clang attribute pop

#endif /* __VMLINUX_H__ */
