//! # gilmsg-zmq-readiness: a libzmq socket's readiness on tokio's reactor
//!
//! libzmq gives every socket a notification fd (`ZMQ_FD`). It becomes
//! readable when the socket's events *may* have changed; what is really
//! there is read from `ZMQ_EVENTS`, and because the fd is edge-triggered,
//! `ZMQ_EVENTS` must be read again after every operation on the socket
//! before waiting (zmq_getsockopt(3)). This crate does the waiting part:
//! [`Readiness`] puts such an fd, or any other, on the current tokio
//! runtime's reactor, and [`any_readable`] waits until one of several has
//! been signalled. Reading `ZMQ_EVENTS` and the sockets themselves stays
//! with the caller, which owns the sockets.
//!
//! ## Why a crate of its own
//! Since tokio 1.54 registering a raw fd is `unsafe` (tokio-rs/tokio#8587):
//! the fd must stay open for as long as it is registered, which tokio cannot
//! check. The `gilmsg` crate forbids `unsafe`, so the promise is kept here,
//! in two blocks, each with its reason:
//! - the registration owns a *duplicate* of the fd (`dup(2)`), so it stays
//!   open for exactly as long as the registration, whatever libzmq does
//!   with the original;
//! - the duplicate is made while the socket is borrowed, and libzmq keeps a
//!   socket's `ZMQ_FD` open until the socket is closed.
//!
//! A duplicate shares its open file description with the original, so the
//! reactor sees every signal libzmq sends to it.

#![deny(unsafe_code)]
#![warn(missing_docs)]

use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::task::Poll;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// One fd registered for readability with the current tokio runtime.
#[derive(Debug)]
pub struct Readiness {
    registered: AsyncFd<OwnedFd>,
}

impl Readiness {
    /// Watches `socket`'s notification fd (`ZMQ_FD`). Call inside a tokio
    /// runtime with I/O enabled; fails (does not panic) outside one.
    pub fn of_socket(socket: &zmq::Socket) -> io::Result<Readiness> {
        let raw = socket.get_fd()?;
        #[allow(unsafe_code)]
        // SAFETY: `raw` is `socket`'s ZMQ_FD, which libzmq keeps open until
        // the socket is closed; `socket` is borrowed for the whole of this
        // call, and the borrowed fd is only used within it (to duplicate it).
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        Readiness::of_fd(borrowed)
    }

    /// Watches any fd (for instance the read end of a wake-up socketpair).
    /// Call inside a tokio runtime with I/O enabled; fails outside one or
    /// in one without I/O (tokio panics there; the panic is caught, but its
    /// message still reaches the panic hook, and a `panic = "abort"` build
    /// aborts). A peer's hang-up on such an fd keeps it readable for good:
    /// stop waiting on an fd whose peer is gone. (`ZMQ_FD` never hangs up.)
    pub fn of_fd(fd: BorrowedFd<'_>) -> io::Result<Readiness> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(io::Error::other(
                "not inside a tokio runtime: an fd can only be watched by a runtime's reactor",
            ));
        }
        let owned = fd.try_clone_to_owned()?;
        // tokio panics, rather than failing, in a runtime built without
        // `enable_io`, and offers no way to ask first.
        let registering = std::panic::catch_unwind(move || {
            #[allow(unsafe_code)]
            // SAFETY: `owned` is moved into the registration, which closes
            // it only when it is dropped, after deregistering it: the fd is
            // open for the registration's whole life.
            unsafe {
                AsyncFd::register_with_interest(owned, Interest::READABLE)
            }
        });
        let registered = match registering {
            Ok(registered) => registered.map_err(|e| e.into_parts().1)?,
            Err(_) => return Err(io::Error::other(
                "the tokio runtime has no I/O driver (build it with `enable_io` or `enable_all`)",
            )),
        };
        Ok(Readiness { registered })
    }

    /// Waits until the fd has been signalled since the last wait, and
    /// takes the signal.
    pub async fn readable(&self) -> io::Result<()> {
        any_readable(std::slice::from_ref(self)).await
    }
}

impl AsFd for Readiness {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.registered.get_ref().as_fd()
    }
}

/// Waits until at least one of `watched` has been signalled, and takes the
/// signal of every one that has (so a later wait does not return at once
/// for a signal already seen). With nothing to watch it waits forever.
pub async fn any_readable(watched: &[Readiness]) -> io::Result<()> {
    poll_fn(|cx| {
        let mut signalled = false;
        for readiness in watched {
            match readiness.registered.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => {
                    guard.clear_ready();
                    signalled = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {}
            }
        }
        if signalled {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pair(context: &zmq::Context, name: &str) -> (zmq::Socket, zmq::Socket) {
        let address = format!("inproc://{name}");
        let a = context.socket(zmq::PAIR).unwrap();
        a.bind(&address).unwrap();
        let b = context.socket(zmq::PAIR).unwrap();
        b.connect(&address).unwrap();
        (a, b)
    }

    /// The protocol a caller follows: read `ZMQ_EVENTS`, and wait only when
    /// it shows nothing.
    async fn wait_for_input(socket: &zmq::Socket, readiness: &Readiness) {
        loop {
            if socket.get_events().unwrap().contains(zmq::POLLIN) {
                return;
            }
            readiness.readable().await.unwrap();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_message_sent_from_another_thread_wakes_the_waiter() {
        let context = zmq::Context::new();
        let (receiver, sender) = pair(&context, "readiness-wakes");
        let readiness = Readiness::of_socket(&receiver).unwrap();
        // The sender lives on a thread of its own (a socket is not `Sync`)
        // and sends a message each time it is told to.
        let (go, told) = std::sync::mpsc::channel::<u32>();
        let (sent_tx, sent) = std::sync::mpsc::channel::<()>();
        let sending = std::thread::spawn(move || {
            for round in told {
                sender.send(round.to_be_bytes().as_slice(), 0).unwrap();
                let _ = sent_tx.send(());
            }
        });
        for round in 0..200u32 {
            let wait = tokio::time::timeout(
                Duration::from_secs(5),
                wait_for_input(&receiver, &readiness),
            );
            if round % 2 == 0 {
                // Sent before the wait starts.
                go.send(round).unwrap();
                sent.recv().unwrap();
                wait.await.expect("woken within 5 s");
            } else {
                // Sent while the wait is under way (the wait is polled first).
                let (woken, ()) = tokio::join!(wait, async { go.send(round).unwrap() });
                woken.expect("woken within 5 s");
                sent.recv().unwrap();
            }
            let got = receiver.recv_bytes(zmq::DONTWAIT).unwrap();
            assert_eq!(got, round.to_be_bytes());
        }
        drop(go);
        sending.join().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_registration_outlives_the_socket_it_came_from() {
        let context = zmq::Context::new();
        let (receiver, _sender) = pair(&context, "readiness-outlives");
        let readiness = Readiness::of_socket(&receiver).unwrap();
        let raw = receiver.get_fd().unwrap();
        drop(receiver);
        // Our duplicate is still open and is not the fd libzmq closed.
        use std::os::fd::AsRawFd;
        assert!(readiness.as_fd().try_clone_to_owned().is_ok());
        assert_ne!(readiness.as_fd().as_raw_fd(), raw);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn any_readable_takes_every_signal_it_saw() {
        let (a_read, a_write) = std::os::unix::net::UnixStream::pair().unwrap();
        let (b_read, b_write) = std::os::unix::net::UnixStream::pair().unwrap();
        let watched = [
            Readiness::of_fd(a_read.as_fd()).unwrap(),
            Readiness::of_fd(b_read.as_fd()).unwrap(),
        ];
        use std::io::Write;
        (&a_write).write_all(b"x").unwrap();
        (&b_write).write_all(b"y").unwrap();
        tokio::time::timeout(Duration::from_secs(5), any_readable(&watched))
            .await
            .expect("signalled")
            .unwrap();
        // Both signals were taken: a second wait finds nothing new.
        let again = tokio::time::timeout(Duration::from_millis(50), any_readable(&watched)).await;
        assert!(again.is_err(), "no signal is left over");
    }

    #[test]
    fn a_runtime_without_io_is_an_error_not_a_panic() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let (read, _write) = std::os::unix::net::UnixStream::pair().unwrap();
        let _inside = runtime.enter();
        let err = Readiness::of_fd(read.as_fd()).unwrap_err();
        assert!(err.to_string().contains("no I/O driver"), "{err}");
    }

    #[test]
    fn outside_a_runtime_it_is_an_error_not_a_panic() {
        let (read, _write) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = Readiness::of_fd(read.as_fd()).unwrap_err();
        assert!(err.to_string().contains("tokio runtime"), "{err}");
    }
}
