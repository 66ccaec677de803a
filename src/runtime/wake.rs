//! A wake-up between two tasks of one worker thread.
//!
//! A connection's reader and writer tasks wake each other once per read. `tokio::sync::Notify`
//! does this for any number of waiters on any thread, with a lock and atomic operations. On
//! one worker thread with one waiter, two `Cell`s are enough.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A wake-up for one waiting task on the same thread, with one stored permit. A notification
/// sent while no task waits completes the next wait at once, like
/// `tokio::sync::Notify::notify_one`.
#[derive(Default)]
pub(crate) struct LocalNotify {
    permit: Cell<bool>,
    waiter: Cell<Option<Waker>>,
}

impl LocalNotify {
    /// Wakes the waiting task, or stores the permit for the next wait when no task waits.
    pub(crate) fn notify_one(&self) {
        self.permit.set(true);
        if let Some(waker) = self.waiter.take() {
            waker.wake();
        }
    }

    /// Waits for a notification. Only one task may wait at a time: a second wait replaces the
    /// first one's waker.
    pub(crate) fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }
}

/// The future returned by [`LocalNotify::notified`].
pub(crate) struct Notified<'a> {
    notify: &'a LocalNotify,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let notify = self.notify;
        if notify.permit.replace(false) {
            return Poll::Ready(());
        }
        let waker = match notify.waiter.take() {
            Some(waker) if waker.will_wake(cx.waker()) => waker,
            _ => cx.waker().clone(),
        };
        notify.waiter.set(Some(waker));
        Poll::Pending
    }
}

impl Drop for Notified<'_> {
    /// Forgets the waker, so a task that stopped waiting is not woken and its memory is not
    /// kept. A permit that arrived stays for the next wait.
    fn drop(&mut self) {
        drop(self.notify.waiter.take());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;

    fn poll_once(future: Pin<&mut Notified<'_>>) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        future.poll(&mut cx)
    }

    #[test]
    fn notify_before_wait_stores_permit() {
        let notify = LocalNotify::default();
        notify.notify_one();
        notify.notify_one();
        let mut first = std::pin::pin!(notify.notified());
        assert_eq!(poll_once(first.as_mut()), Poll::Ready(()));
        // Two notifications without a wait between them leave one permit, not two.
        let mut second = std::pin::pin!(notify.notified());
        assert_eq!(poll_once(second.as_mut()), Poll::Pending);
    }

    #[test]
    fn notify_wakes_waiting_task() {
        tokio_uring::start(async {
            let notify = Rc::new(LocalNotify::default());
            let woken = Rc::new(Cell::new(false));
            let task = tokio_uring::spawn({
                let notify = Rc::clone(&notify);
                let woken = Rc::clone(&woken);
                async move {
                    notify.notified().await;
                    woken.set(true);
                }
            });
            tokio::task::yield_now().await;
            assert!(!woken.get(), "no notification sent yet");
            notify.notify_one();
            task.await.expect("task");
            assert!(woken.get());
        });
    }

    #[test]
    fn dropped_wait_forgets_waker_keeps_permit() {
        let notify = LocalNotify::default();
        {
            let mut waiting = std::pin::pin!(notify.notified());
            assert_eq!(poll_once(waiting.as_mut()), Poll::Pending);
        }
        let waiter = notify.waiter.take();
        assert!(waiter.is_none(), "a dropped wait leaves no waker behind");

        {
            let mut waiting = std::pin::pin!(notify.notified());
            assert_eq!(poll_once(waiting.as_mut()), Poll::Pending);
            notify.notify_one();
        }
        let mut next = std::pin::pin!(notify.notified());
        assert_eq!(poll_once(next.as_mut()), Poll::Ready(()));
    }
}
