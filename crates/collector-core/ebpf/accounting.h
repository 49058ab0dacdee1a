/* SPDX-License-Identifier: (MIT OR GPL-2.0-only) */
/*
 * The accounting every program of the workspace keeps, as the shared loader
 * (collector_core::ebpf) reads it: COUNTERS[0] counts every record a program
 * tried to send, COUNTERS[1] every one its ring buffer had no room for. So,
 * per CPU and in total, produced = delivered + dropped, exactly.
 */
#ifndef __DAEMONEYE_ACCOUNTING_H__
#define __DAEMONEYE_ACCOUNTING_H__

#define COUNTER_PRODUCED 0
#define COUNTER_DROPPED 1

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, u32);
	__type(value, u64);
} COUNTERS SEC(".maps");

static __always_inline void count(u32 which)
{
	u64 *n = bpf_map_lookup_elem(&COUNTERS, &which);
	if (n)
		*n += 1;
}

#endif /* __DAEMONEYE_ACCOUNTING_H__ */
