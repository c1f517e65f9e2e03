//! When a shard's hub next has periodic work ([`TickAlarm`]), and the task that waits for it.
//!
//! The hub's tick (expiries, readiness timeouts, bus backlogs, heartbeat, resync) used to run
//! every 100 ms on every shard, busy or not: on a node with nothing due that was ten wake-ups a
//! second, each a full park and wake of the executor (`docs/benchmarks.md`, "Issue 15 item 4 in
//! session 7"). Now the hub says when its next tick is due: 100 ms ahead while something needs
//! the fast tick, else the earliest deadline it holds, at most [`IDLE_TICK_MS`] ahead. Work that
//! makes a tick due sooner brings the alarm forward, which wakes the waiting task.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

/// The tick's period while something needs it (acks, requests, mailboxes, bus backlogs).
pub const TICK_MS: u64 = 100;
/// The longest a hub goes without a tick (then it finds nothing to do, cheaply).
pub const IDLE_TICK_MS: u64 = 1_000;

/// The shard-clock time (ms) of a hub's next tick; shared by the hub, which moves it, and the
/// task that runs the tick ([`wait_due`]).
#[derive(Debug, Default)]
pub struct TickAlarm {
    due_ms: Cell<u64>,
    waiter: RefCell<Option<Waker>>,
}

impl TickAlarm {
    /// An alarm due at once (`0`): the first tick runs when its task starts.
    pub fn new() -> TickAlarm {
        TickAlarm::default()
    }

    /// When the next tick is due (shard ms).
    pub fn due_ms(&self) -> u64 {
        self.due_ms.get()
    }

    /// Sets the next tick (the tick itself, when it has computed it).
    pub fn set(&self, due_ms: u64) {
        self.due_ms.set(due_ms);
    }

    /// Brings the next tick forward to `due_ms` if it is later, waking the waiting task.
    pub fn at_most(&self, due_ms: u64) {
        if due_ms < self.due_ms.get() {
            self.due_ms.set(due_ms);
            if let Some(waker) = self.waiter.borrow_mut().take() {
                waker.wake();
            }
        }
    }
}

/// Waits until `now_ms()` reaches the alarm's due time, following it when it is brought forward.
pub async fn wait_due(alarm: &TickAlarm, now_ms: impl Fn() -> u64) {
    loop {
        let due = alarm.due_ms();
        let now = now_ms();
        if now >= due {
            return;
        }
        let mut timer = glommio::timer::Timer::new(Duration::from_millis(due - now));
        std::future::poll_fn(|cx: &mut Context<'_>| {
            if alarm.due_ms() < due || Pin::new(&mut timer).poll(cx).is_ready() {
                return Poll::Ready(());
            }
            *alarm.waiter.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_alarm_only_moves_forward_by_at_most() {
        let a = TickAlarm::new();
        a.set(500);
        a.at_most(700);
        assert_eq!(a.due_ms(), 500);
        a.at_most(200);
        assert_eq!(a.due_ms(), 200);
        a.set(900);
        assert_eq!(a.due_ms(), 900);
    }

    #[test]
    fn a_waiting_task_follows_the_alarm_forward() {
        let ex = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(64 * 1024)
            .make()
            .unwrap();
        ex.run(async {
            let start = std::time::Instant::now();
            let ms = move || start.elapsed().as_millis() as u64;
            let alarm = std::rc::Rc::new(TickAlarm::new());
            alarm.set(60_000);
            let a = alarm.clone();
            glommio::spawn_local(async move {
                glommio::timer::sleep(Duration::from_millis(20)).await;
                a.at_most(ms() + 30);
            })
            .detach();
            wait_due(&alarm, ms).await;
            let waited = start.elapsed();
            assert!(waited >= Duration::from_millis(50), "{waited:?}");
            assert!(waited < Duration::from_secs(30), "{waited:?}");
        });
    }
}
