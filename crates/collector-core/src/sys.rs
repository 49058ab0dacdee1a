//! The calls into the C library that no safe wrapper (nix, rustix) offers:
//! the framework's only `unsafe`, each block with its `// SAFETY:`.
#![allow(unsafe_code)]

/// Gives the allocator's free memory back to the kernel (glibc's
/// `malloc_trim(0)`), returning whether any was released.
///
/// glibc keeps what a program frees for its next allocations, and can
/// return it only from the top of its heap: after a burst of short-lived
/// allocations under long-lived ones (procmond's parse of the kernel's BTF
/// to load its eBPF programs, about 16 MiB), the freed pages stay resident
/// for the life of the process. `malloc_trim` hands every free page back,
/// wherever it is. Call it after such a burst, not on a hot path (it walks
/// the allocator's free lists under their locks). A no-op returning
/// `false` where the C library is not glibc.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `malloc_trim` takes a plain integer and only walks and
        // releases the allocator's own free chunks, under the allocator's
        // locks; it is safe to call from any thread at any time, and no
        // Rust value points into memory that is free.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// Registers `fd` with the current tokio runtime's reactor for readiness
/// to read (tokio's safe constructors are deprecated: they cannot know that
/// the descriptor stays open). Must be called within a runtime with I/O
/// enabled.
///
/// # Errors
/// When the reactor refuses the descriptor (`epoll_ctl`).
pub fn async_readable(
    fd: std::os::fd::OwnedFd,
) -> std::io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the `AsyncFd` owns the `OwnedFd`, which keeps the descriptor
    // open and returns the same raw value from every `as_raw_fd` until the
    // `AsyncFd` is dropped (deregistering it first) or gives it back.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(std::io::Error::from)
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn freed_memory_under_a_live_allocation_is_released() {
        // 128 MiB in small blocks, a live block above them, the small ones
        // freed: glibc cannot trim its heap's top, only malloc_trim helps.
        // (Other tests of this binary allocate meanwhile: half must go.)
        let small: Vec<Vec<u8>> = (0..32_768).map(|_| vec![7u8; 4096]).collect();
        let live = vec![1u8; 4096];
        drop(small);
        let before = resident();
        assert!(super::release_free_memory());
        let after = resident();
        assert!(
            after + (64 << 20) < before,
            "resident {before} -> {after} bytes"
        );
        assert_eq!(live[0], 1);
    }

    /// Resident bytes (`/proc/self/statm`, 4 KiB pages).
    #[allow(clippy::unwrap_used)]
    fn resident() -> u64 {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
        statm
            .split_whitespace()
            .nth(1)
            .unwrap()
            .parse::<u64>()
            .unwrap()
            * 4096
    }
}
