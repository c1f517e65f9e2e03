//! Whether this process may use io_uring at all, asked once before any shard starts, so that a
//! refusal is one clear error naming the likely cause instead of a panic inside the runtime.
//! Every shard's executor needs io_uring; there is no fallback.

use std::io;

/// io_uring cannot be used by this process.
#[derive(Debug, thiserror::Error)]
#[error("io_uring is not available to this process (io_uring_setup: {source}): {hint}")]
pub struct IoUringUnavailable {
    /// What `io_uring_setup(2)` said.
    pub source: io::Error,
    /// The likely cause and the fix.
    pub hint: &'static str,
}

/// Size of `struct io_uring_params` (Linux uapi): 120 bytes since 5.4, zeroed = no flags.
const PARAMS_BYTES: usize = 120;

/// Creates and closes a one-entry ring.
pub fn probe() -> Result<(), IoUringUnavailable> {
    let mut params = [0u8; PARAMS_BYTES];
    // SAFETY: io_uring_setup reads and writes a `struct io_uring_params`, which `params` is
    // large enough for and outlives the call; it returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 1u32, params.as_mut_ptr()) };
    if fd < 0 {
        let source = io::Error::last_os_error();
        let hint = match source.raw_os_error() {
            Some(libc::EPERM) | Some(libc::EACCES) => {
                "a seccomp profile refuses it (Docker's and containerd's default profiles and \
                 Kubernetes' RuntimeDefault do) or the sysctl kernel.io_uring_disabled is set; \
                 run the container with deploy/container/seccomp-tether.json (docs/operations.md, \
                 \"Containers\")"
            }
            Some(libc::ENOSYS) => {
                "this kernel (or sandbox, e.g. gVisor) has no io_uring; tether needs Linux 5.8 or \
                 later with io_uring enabled"
            }
            Some(libc::ENOMEM) => {
                "the locked-memory limit is too low for the ring (kernels before 5.12); raise \
                 LimitMEMLOCK / ulimit -l"
            }
            _ => "tether needs Linux 5.8 or later with io_uring enabled",
        };
        return Err(IoUringUnavailable { source, hint });
    }
    // SAFETY: `fd` is the descriptor io_uring_setup just returned; nothing else holds it.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn io_uring_is_available_here() {
        super::probe().unwrap();
    }
}
