//! The few operations on raw descriptors that tokio-uring 0.5 does not offer.
//!
//! Ownership contract (tokio-uring enforces it and this module relies on it): an io_uring
//! operation owns its buffer and keeps its file descriptor open until the kernel posts the
//! completion, even when the future that submitted it is dropped. So a connection that must
//! end while a read is in flight calls `shutdown(Both)` on the socket, which makes the kernel
//! complete the read with 0 bytes, and only then can the descriptor actually close.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

/// Duplicates the descriptor of a tokio-uring socket so the socket can move to another
/// worker's ring: the caller drops the original stream afterwards, and the duplicate keeps
/// the TCP connection open. The caller must have no operation in flight on `stream` that
/// could still read or write after the hand-off.
pub fn duplicate_socket(stream: &tokio_uring::net::TcpStream) -> io::Result<OwnedFd> {
    let fd = stream.as_raw_fd();
    // SAFETY: `fd` belongs to `stream`, which is borrowed for this whole function, so the
    // descriptor stays open while the borrowed handle exists; the handle is only used to dup.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    borrowed.try_clone_to_owned()
}

/// Shuts down a listening socket so that an accept in flight on it completes with an error
/// and the worker stops accepting (used by the drain).
pub fn shutdown_listener(listener: &tokio_uring::net::TcpListener) -> io::Result<()> {
    // SAFETY: the descriptor belongs to `listener`, which is borrowed for this call, so it is
    // open; shutdown(2) does not touch memory.
    let result = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Checks that this process can create an io_uring instance, and explains how to fix it when
/// it cannot.
/// Runs on a thread of its own, because creating and dropping a runtime is not allowed
/// inside another async runtime (an embedding application or a test).
pub fn probe() -> Result<(), String> {
    let attempt = std::thread::spawn(|| {
        tokio_uring::Runtime::new(&tokio_uring::builder())
            .map(drop)
            .map_err(|err| explain_setup_error(&err))
    });
    attempt
        .join()
        .unwrap_or_else(|_| Err("cannot set up io_uring: the probe thread panicked".to_owned()))
}

/// Names the usual cause of an io_uring setup failure and the setting to change.
pub fn explain_setup_error(err: &io::Error) -> String {
    let hint = match err.raw_os_error() {
        Some(libc::ENOSYS) => {
            "the kernel has no io_uring support: use Linux 5.11 or newer built with CONFIG_IO_URING=y"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            "io_uring is disabled for this process: set the sysctl kernel.io_uring_disabled=0 \
             (or 1 and add the user to kernel.io_uring_group), and if this runs in a container, \
             allow io_uring_setup, io_uring_enter and io_uring_register in its seccomp profile"
        }
        Some(libc::ENOMEM) => {
            "the kernel could not allocate the ring: raise the locked-memory limit \
             (ulimit -l, or LimitMEMLOCK= in the systemd unit) or use Linux 5.12 or newer"
        }
        Some(libc::EMFILE) | Some(libc::ENFILE) => {
            "the process is out of file descriptors: raise LimitNOFILE / ulimit -n"
        }
        _ => "check that the kernel supports io_uring and that no seccomp filter blocks it",
    };
    format!("cannot set up io_uring: {err}; {hint}")
}
