//! Non-blocking socket calls on descriptors the caller owns.
//!
//! Why this exists: under io_uring a pending read owns its buffer, so a connection that waits
//! for data with a 4 KiB read in flight costs 4 KiB while idle. Instead, a connection waits for
//! *readiness* (monoio's `readable()`, an io_uring `POLL_ADD` or epoll) and then reads with a
//! non-blocking `recv(2)` into the shard's one scratch buffer. Writes go out the same way: a
//! non-blocking `send(2)` straight from the shared frame, and only what the kernel does not take
//! waits in the connection's outbox. Idle connections therefore hold no buffer at all.
//!
//! Every call takes a [`BorrowedFd`], so it cannot outlive the socket it acts on, and goes
//! through `socket2::SockRef` where socket2 covers the call.

use std::{
    io::{self, IoSlice},
    mem::MaybeUninit,
    net::Shutdown,
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd},
};

use socket2::SockRef;

/// The descriptor of a socket owned by `owner`, borrowed for as long as `owner` is.
///
/// monoio's sockets expose only `AsRawFd`; this ties the raw number back to its owner's lifetime
/// so the rest of the crate never handles a bare descriptor.
pub fn borrow<T: AsRawFd>(owner: &T) -> BorrowedFd<'_> {
    // SAFETY: `owner` owns the descriptor and keeps it open while it lives; the returned value
    // borrows `owner`, so it cannot be used after `owner` is dropped (and its descriptor closed
    // or reused).
    unsafe { BorrowedFd::borrow_raw(owner.as_raw_fd()) }
}

/// Takes the descriptor out of a monoio socket, as an owned descriptor (for handing a
/// connection to another shard). The socket is consumed; nothing else owns or closes it.
pub fn into_owned(socket: impl IntoRawFd) -> OwnedFd {
    let fd = socket.into_raw_fd();
    // SAFETY: `into_raw_fd` released the descriptor from its previous owner (monoio's stream,
    // and from the epoll driver's registration) without closing it, so it is open and this is
    // now its only owner.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Reads what is available without blocking. `Ok(0)` is end of stream; `WouldBlock` means no
/// data is ready yet.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `MaybeUninit<u8>` has the layout of `u8`, and `recv(2)` only ever writes
    // initialised bytes into the slice (it never de-initialises any), so viewing the initialised
    // buffer as possibly-uninitialised for the call is sound.
    let uninit = unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>]) };
    retry(|| SockRef::from(&fd).recv_with_flags(uninit, libc::MSG_DONTWAIT))
}

/// Looks at what is available without consuming it or blocking (`MSG_PEEK`): how a wss://
/// port tells a TLS ClientHello from a plain HTTP request by its first byte. `Ok(0)` is end of
/// stream; `WouldBlock` means nothing arrived yet.
pub fn peek(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: as in `recv`: `recv(2)` only writes initialised bytes into the slice.
    let uninit = unsafe { &mut *(std::ptr::from_mut::<[u8]>(buf) as *mut [MaybeUninit<u8>]) };
    retry(|| SockRef::from(&fd).recv_with_flags(uninit, libc::MSG_DONTWAIT | libc::MSG_PEEK))
}

/// Writes as much of `bufs` as the socket's send buffer takes, without blocking and without
/// raising `SIGPIPE`. Returns the number of bytes written; `WouldBlock` means none fit.
pub fn send_vectored(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let bufs = &bufs[..bufs.len().min(libc::UIO_MAXIOV as usize)];
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    retry(|| SockRef::from(&fd).send_vectored_with_flags(bufs, flags))
}

/// Writes one buffer; see [`send_vectored`].
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    retry(|| SockRef::from(&fd).send_with_flags(buf, flags))
}

/// `shutdown(2)`. Errors (e.g. `ENOTCONN` after the peer left) are ignored: the caller is
/// tearing the connection down either way. `Write` sends FIN after what is queued and keeps
/// reading (the WebSocket closing handshake); `Both` also wakes a task waiting for readiness,
/// which then sees end of stream.
pub fn shutdown(fd: BorrowedFd<'_>, how: Shutdown) {
    let _ = SockRef::from(&fd).shutdown(how);
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

/// Retries `call` while it fails with `EINTR`.
fn retry<T>(mut call: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match call() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
        os::fd::AsFd,
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
        let err = recv(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.write_all(b"hello").unwrap();
        // Loopback delivery is synchronous with the write, but poll until it shows up anyway.
        let n = loop {
            match recv(b.as_fd(), &mut buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        assert_eq!(&buf[..n], b"hello");
    }

    #[test]
    fn peek_leaves_the_bytes_for_the_next_read() {
        let (mut a, b) = pair();
        let mut buf = [0u8; 1];
        let err = peek(b.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        a.write_all(b"\x16rest").unwrap();
        while peek(b.as_fd(), &mut buf).is_err() {
            std::thread::yield_now();
        }
        assert_eq!(buf, [0x16]);
        let mut all = [0u8; 5];
        assert_eq!(recv(b.as_fd(), &mut all).unwrap(), 5);
        assert_eq!(&all, b"\x16rest");
    }

    #[test]
    fn send_vectored_writes_all_slices_in_order() {
        let (mut a, b) = pair();
        let n = send_vectored(b.as_fd(), &[IoSlice::new(b"ab"), IoSlice::new(b"cd")]).unwrap();
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
            .find_map(|_| send(b.as_fd(), &[0u8; 1024]).err())
            .expect("sending to a closed peer must fail");
        assert!(matches!(
            err.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ));
    }

    #[test]
    fn shutdown_both_makes_recv_see_end_of_stream() {
        let (_a, b) = pair();
        shutdown(b.as_fd(), Shutdown::Both);
        let mut buf = [0u8; 8];
        assert_eq!(recv(b.as_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn owned_descriptor_keeps_the_socket_open() {
        let (mut a, b) = pair();
        let owned = into_owned(b);
        let std_stream = TcpStream::from(owned);
        a.write_all(b"x").unwrap();
        let mut got = [0u8; 1];
        (&std_stream).read_exact(&mut got).unwrap();
        assert_eq!(&got, b"x");
    }
}
