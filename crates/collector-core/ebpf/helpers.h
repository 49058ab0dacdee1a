/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * The little of libbpf's bpf_helpers.h that the workspace's eBPF programs
 * (procmond's process.bpf.c, netmond's net.bpf.c) need: section and BTF
 * map-definition macros, and the helpers they call, by their stable UAPI
 * ids (include/uapi/linux/bpf.h, `FN(...)` order). Kept here so building
 * needs clang only, no libbpf headers.
 */
#ifndef __DAEMONEYE_HELPERS_H__
#define __DAEMONEYE_HELPERS_H__

#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
#define __always_inline inline __attribute__((always_inline))

/* 1 */
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)1;
/* 5: CLOCK_MONOTONIC, in nanoseconds. */
static u64 (*bpf_ktime_get_ns)(void) = (void *)5;
/* 14: the current thread's tgid << 32 | pid (init pid namespace). */
static u64 (*bpf_get_current_pid_tgid)(void) = (void *)14;
/* 15: the current thread's gid << 32 | uid (initial user namespace). */
static u64 (*bpf_get_current_uid_gid)(void) = (void *)15;
/* 46: the socket's cookie (sock_diag's idiag_cookie), made if it had none. */
static u64 (*bpf_get_socket_cookie)(void *sk) = (void *)46;
/* 112 */
static long (*bpf_probe_read_user)(void *dst, u32 size, const void *unsafe_ptr) = (void *)112;
/* 113 */
static long (*bpf_probe_read_kernel)(void *dst, u32 size, const void *unsafe_ptr) = (void *)113;
/* 115: returns the length copied including the NUL, or a negative error. */
static long (*bpf_probe_read_kernel_str)(void *dst, u32 size, const void *unsafe_ptr) = (void *)115;
/* 130: copies into a ring buffer; -EAGAIN or -ENOSPC when it is full. */
static long (*bpf_ringbuf_output)(void *ringbuf, void *data, u64 size, u64 flags) = (void *)130;
/* 131: NULL when the ring buffer is full. */
static void *(*bpf_ringbuf_reserve)(void *ringbuf, u64 size, u64 flags) = (void *)131;
/* 132 */
static void (*bpf_ringbuf_submit)(void *data, u64 flags) = (void *)132;
/* 158: the current task, as a BTF pointer. */
static struct task_struct *(*bpf_get_current_task_btf)(void) = (void *)158;

#endif /* __DAEMONEYE_HELPERS_H__ */
