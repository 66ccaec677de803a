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

/// Appends to `buf` the bytes already queued on the socket, up to the spare capacity of `buf`,
/// without waiting (`recv` with `MSG_DONTWAIT`). Returns the number of bytes added. Nothing
/// waiting, the peer's FIN and errors all return 0, and the next io_uring read reports the
/// last two. The caller must have no read in flight on `stream`.
pub fn recv_waiting(stream: &tokio_uring::net::TcpStream, buf: &mut bytes::BytesMut) -> usize {
    let spare = buf.spare_capacity_mut();
    if spare.is_empty() {
        return 0;
    }
    // SAFETY: the descriptor belongs to `stream`, borrowed for this call, so it is open.
    // `spare` is writable memory of `spare.len()` bytes owned by `buf`, which is borrowed
    // mutably for this call, and recv(2) writes at most that many bytes into it.
    let received = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            spare.as_mut_ptr().cast(),
            spare.len(),
            libc::MSG_DONTWAIT,
        )
    };
    let Ok(received) = usize::try_from(received) else {
        return 0;
    };
    // SAFETY: recv(2) initialised the first `received` bytes of the spare capacity, and
    // `received <= spare.len()`.
    unsafe { buf.set_len(buf.len() + received) };
    received
}

/// Returns the number of bytes in the socket's send queue that have not been transmitted yet
/// (`SIOCOUTQNSD`): bytes that wait for the peer's receive window or for congestion control.
pub fn unsent_bytes(stream: &tokio_uring::net::TcpStream) -> io::Result<usize> {
    let mut unsent: libc::c_int = 0;
    // SAFETY: the descriptor belongs to `stream`, borrowed for this call, so it is open, and
    // SIOCOUTQNSD writes one c_int to the pointer, which points to `unsent`.
    let result = unsafe {
        libc::ioctl(
            stream.as_raw_fd(),
            libc::SIOCOUTQNSD,
            std::ptr::from_mut(&mut unsent),
        )
    };
    if result != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(usize::try_from(unsent).unwrap_or(0))
}

/// Sends `slices`, in order, with one `sendmsg` that does not wait (`MSG_DONTWAIT`), and
/// returns how many bytes the socket took, which may be fewer than offered. `WouldBlock`
/// means the send buffer is full. With `more` (`MSG_MORE`) the kernel may hold a tail shorter
/// than a segment back, so that a `shutdown` right after sends it in the same segment as the
/// FIN. The caller must have no write in flight on `stream`.
pub fn send_now(
    stream: &tokio_uring::net::TcpStream,
    slices: &[io::IoSlice<'_>],
    more: bool,
) -> io::Result<usize> {
    // SAFETY: the descriptor belongs to `stream`, which is borrowed for this whole function.
    // So it stays open while the borrowed handle exists, and the handle is only used to send.
    let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    let mut flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    if more {
        flags |= libc::MSG_MORE;
    }
    socket2::SockRef::from(&borrowed).send_vectored_with_flags(slices, flags)
}

/// Sets TCP_DEFER_ACCEPT on a listening socket: a connection is accepted only once its first
/// data has arrived, or after about `seconds` without any.
pub fn defer_accept(listener: &socket2::Socket, seconds: u32) -> io::Result<()> {
    let value = libc::c_int::try_from(seconds).unwrap_or(libc::c_int::MAX);
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: the descriptor belongs to `listener`, borrowed for this call, so it is open.
    // `value` is a live c_int and `len` is its size, which is what TCP_DEFER_ACCEPT reads.
    let result = unsafe {
        libc::setsockopt(
            listener.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
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

/// Creates a worker's tokio-uring runtime with `entries` submission queue entries (tokio-uring's
/// default when `None`).
///
/// The ring is set up with `IORING_SETUP_COOP_TASKRUN` where the kernel has it (Linux 5.19 and
/// newer): a completion that arrives while the worker runs its own code waits for the worker's
/// next system call instead of interrupting it. The worker makes one at the end of every loop
/// turn, so a busy worker is interrupted less, and a socket read handled later finds more of
/// the peer's data. On an older kernel the flag is refused with EINVAL and the ring is set up
/// without it.
pub fn new_runtime(entries: Option<u32>) -> io::Result<tokio_uring::Runtime> {
    let build = |coop: bool| {
        let mut ring = tokio_uring::uring_builder();
        if coop {
            ring.setup_coop_taskrun();
        }
        let mut builder = tokio_uring::builder();
        if let Some(entries) = entries {
            builder.entries(entries);
        }
        builder.uring_builder(&ring);
        tokio_uring::Runtime::new(&builder)
    };
    match build(true) {
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) => build(false),
        result => result,
    }
}

/// Checks that this process can create an io_uring instance, and explains how to fix it when
/// it cannot.
/// Runs on a thread of its own, because creating and dropping a runtime is not allowed
/// inside another async runtime (an embedding application or a test).
pub fn probe() -> Result<(), String> {
    let attempt = std::thread::spawn(|| {
        new_runtime(None)
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Returns both ends of a loopback TCP connection: a plain peer and a tokio-uring stream.
    fn connected_pair() -> (std::net::TcpStream, tokio_uring::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let peer = std::net::TcpStream::connect(address).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        (peer, tokio_uring::net::TcpStream::from_std(accepted))
    }

    #[test]
    fn send_now_until_buffer_full() {
        use std::io::{IoSlice, Read};
        tokio_uring::start(async {
            let (mut peer, stream) = connected_pair();

            let slices = [
                IoSlice::new(b"one "),
                IoSlice::new(b"two "),
                IoSlice::new(b"three"),
            ];
            assert_eq!(send_now(&stream, &slices, false).expect("send"), 13);
            let mut got = [0u8; 13];
            peer.read_exact(&mut got).expect("read");
            assert_eq!(&got, b"one two three");

            // The peer stops reading: the send buffer fills and the call reports WouldBlock
            // instead of waiting.
            let block = vec![7u8; 1 << 20];
            let mut accepted_bytes = 0usize;
            let blocked = loop {
                match send_now(&stream, &[IoSlice::new(&block)], false) {
                    Ok(sent) => {
                        assert!(sent > 0);
                        accepted_bytes += sent;
                        assert!(accepted_bytes < 1 << 30, "the send buffer never filled");
                    }
                    Err(err) => break err,
                }
            };
            assert_eq!(blocked.kind(), io::ErrorKind::WouldBlock);
            assert!(accepted_bytes > 0);
        });
    }

    #[test]
    fn recv_waiting_takes_queued_bytes() {
        tokio_uring::start(async {
            let (mut peer, stream) = connected_pair();

            let mut buf = bytes::BytesMut::with_capacity(64);
            assert_eq!(recv_waiting(&stream, &mut buf), 0, "nothing sent yet");
            assert!(buf.is_empty());

            peer.write_all(b"first batch").expect("write");
            // Loopback delivers within the write call, but allow for a slow machine.
            for _ in 0..100 {
                if recv_waiting(&stream, &mut buf) > 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert_eq!(&buf[..], b"first batch");

            // Appends after the bytes already in the buffer, up to its spare capacity only.
            peer.write_all(&[b'x'; 100]).expect("write");
            let spare = buf.capacity() - buf.len();
            let mut added = 0;
            for _ in 0..100 {
                added = recv_waiting(&stream, &mut buf);
                if added > 0 {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert_eq!(added, spare);
            assert!(buf.starts_with(b"first batch"));
            assert_eq!(buf.len(), buf.capacity());
            assert_eq!(recv_waiting(&stream, &mut buf), 0, "no spare capacity");

            // The peer's FIN returns 0, the same as nothing waiting.
            drop(peer);
            let mut rest = bytes::BytesMut::with_capacity(256);
            let mut total = 0;
            for _ in 0..100 {
                total += recv_waiting(&stream, &mut rest);
                if total >= 100 - spare {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            assert_eq!(total, 100 - spare);
            assert_eq!(recv_waiting(&stream, &mut rest), 0);
        });
    }
}
