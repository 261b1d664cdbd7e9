//! Non-blocking socket calls on raw descriptors: the only `unsafe` in the crate.
//!
//! Why this exists: under io_uring a pending read owns its buffer, so a connection that waits
//! for data with a 4 KiB read in flight costs 4 KiB while idle. Instead, a connection waits for
//! *readiness* (monoio's `readable()`, an io_uring `POLL_ADD` or epoll) and then reads with a
//! non-blocking `recv(2)` into the shard's one scratch buffer. Writes go out the same way: a
//! non-blocking `send(2)` straight from the shared frame, and only what the kernel does not take
//! waits in the connection's outbox. Idle connections therefore hold no buffer at all.
//!
//! Every function here takes a descriptor the caller owns for the duration of the call (the
//! connection keeps its `TcpStream` alive while it calls these), so the worst a wrong descriptor
//! can do is fail with `EBADF`; memory safety only depends on the slices passed in.

use std::{
    io::{self, IoSlice},
    os::fd::RawFd,
};

/// Reads what is available without blocking. `Ok(0)` is end of stream; `WouldBlock` means no
/// data is ready yet.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is a valid, writable slice of `buf.len()` bytes for the whole call and
        // the kernel writes at most that many bytes into it.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes as much of `bufs` as the socket's send buffer takes, without blocking and without
/// raising `SIGPIPE`. Returns the number of bytes written; `WouldBlock` means none fit.
pub fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let iovlen = bufs.len().min(libc::UIO_MAXIOV as usize);
    // SAFETY: `msghdr` is plain data; all-zero is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is guaranteed ABI-compatible with `struct iovec` on Unix; the kernel only reads
    // through these pointers.
    msg.msg_iov = bufs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iovlen as _;
    loop {
        // SAFETY: `msg` points at `iovlen` valid iovecs borrowed from `bufs` for this call.
        let n = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Writes one buffer; see [`send_vectored`].
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    send_vectored(fd, &[IoSlice::new(buf)])
}

/// Which directions [`shutdown`] closes.
#[derive(Clone, Copy, Debug)]
pub enum Shutdown {
    /// Send FIN after what is queued; keep reading (the WebSocket closing handshake).
    Write,
    /// Stop both directions: wakes a task waiting for readiness, which then sees end of stream.
    Both,
}

/// `shutdown(2)`. Errors (e.g. `ENOTCONN` after the peer left) are ignored: the caller is
/// tearing the connection down either way.
pub fn shutdown(fd: RawFd, how: Shutdown) {
    let how = match how {
        Shutdown::Write => libc::SHUT_WR,
        Shutdown::Both => libc::SHUT_RDWR,
    };
    // SAFETY: no memory is passed; an invalid descriptor only yields an error.
    unsafe {
        libc::shutdown(fd, how);
    }
}

/// Sets the calling thread's nice value (Linux: per thread). Negative values need
/// `CAP_SYS_NICE`; the error is returned for the caller to log.
pub fn raise_thread_priority(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: setpriority only reads its integer arguments.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Takes ownership of a raw descriptor handed over from another shard.
///
/// # Safety
/// `fd` must be an open socket that nothing else owns or will close.
pub unsafe fn owned_fd(fd: RawFd) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    // SAFETY: guaranteed by the caller.
    unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::fd::AsRawFd,
    };

    use super::*;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn recv_would_block_then_reads() {
        let (mut a, b) = pair();
        let mut buf = [0u8; 16];
        let err = recv(b.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.write_all(b"hello").unwrap();
        // Loopback delivery is synchronous with the write, but poll until it shows up anyway.
        let n = loop {
            match recv(b.as_raw_fd(), &mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(&buf[..n], b"hello");
    }

    #[test]
    fn send_vectored_writes_all_slices_in_order() {
        let (mut a, b) = pair();
        let n = send_vectored(b.as_raw_fd(), &[IoSlice::new(b"ab"), IoSlice::new(b"cd")]).unwrap();
        assert_eq!(n, 4);
        let mut got = [0u8; 4];
        a.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"abcd");
    }

    #[test]
    fn send_after_peer_closed_is_an_error_not_a_signal() {
        let (a, b) = pair();
        drop(a);
        // The first send may succeed (RST arrives afterwards); keep sending until it fails.
        let err = (0..100)
            .find_map(|_| send(b.as_raw_fd(), &[0u8; 1024]).err())
            .expect("sending to a closed peer must fail");
        assert!(matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ));
    }

    #[test]
    fn shutdown_both_makes_recv_see_end_of_stream() {
        let (_a, b) = pair();
        shutdown(b.as_raw_fd(), Shutdown::Both);
        let mut buf = [0u8; 8];
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 0);
    }
}
