//! The places for prediction requests ([`super::Limits::max_in_flight`]) and the wait for one.
//!
//! A request over the limit waits up to `admission_wait` for a place and is shed with 503 when
//! none comes free ([`admit`]). Waiters are served in the order they came while the queue is
//! short. Once the oldest has waited half of its wait, more arrive than are served (the queue is
//! standing), and in order every request admitted would have waited most of the wait, and of
//! its deadline, before its work began; a freed place then goes to the newest waiter instead
//! (adaptive LIFO, as in Facebook's "Fail at scale"): those admitted wait little, and the oldest
//! are shed when their wait ends, as they would have been anyway. The wait itself is what bounds
//! the rate of 503s (each waiting client gets at most one per wait), and so their cost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::HttpBody as _;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::oneshot;
// tokio's clock, which tests can pause and advance.
use tokio::time::Instant;

use super::{ApiError, V2Error, is_v2};

/// `limit` places, and how long a request waits for one.
#[derive(Debug, Clone)]
pub(super) struct Places {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    limit: usize,
    wait: Duration,
}

#[derive(Debug)]
struct Queue {
    free: usize,
    /// Oldest first.
    waiters: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Waiter {
    since: Instant,
    place: oneshot::Sender<Place>,
}

/// One place, handed to a waiter or freed when dropped.
#[derive(Debug)]
pub(super) struct Place {
    /// None once the place has been handed on.
    shared: Option<Arc<Shared>>,
}

impl Places {
    /// `limit` places (at least one); a request waits up to `wait` for one.
    pub(super) fn new(limit: usize, wait: Duration) -> Self {
        let limit = limit.max(1);
        Self {
            shared: Arc::new(Shared {
                queue: Mutex::new(Queue {
                    free: limit,
                    waiters: VecDeque::new(),
                }),
                limit,
                wait,
            }),
        }
    }

    /// A place, at once or within the wait; none when no place came free in time.
    pub(super) async fn acquire(&self) -> Option<Place> {
        let handed = {
            let mut queue = self.shared.lock();
            if queue.free > 0 {
                queue.free -= 1;
                return Some(Place {
                    shared: Some(Arc::clone(&self.shared)),
                });
            }
            if self.shared.wait.is_zero() {
                return None;
            }
            queue.forget_gone();
            let (place, handed) = oneshot::channel();
            queue.waiters.push_back(Waiter {
                since: Instant::now(),
                place,
            });
            handed
        };
        // A place handed on just as the wait ends is dropped with the receiver, which frees it
        // for the next waiter: none is lost.
        tokio::time::timeout(self.shared.wait, handed)
            .await
            .ok()
            .and_then(Result::ok)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue is left consistent at every point a panic could come from (none is
        // expected), so a poisoned lock still holds a valid queue.
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Queue {
    /// Drops the oldest waiters that stopped waiting (their wait ended or their request was
    /// dropped), so that the front is the oldest still waiting.
    fn forget_gone(&mut self) {
        while self.waiters.front().is_some_and(|w| w.place.is_closed()) {
            self.waiters.pop_front();
        }
    }

    /// The waiter the next freed place goes to: the oldest, or the newest once the oldest has
    /// waited half of `wait` (the module's doc).
    fn next(&mut self, wait: Duration) -> Option<Waiter> {
        self.forget_gone();
        let standing = self.waiters.front()?.since.elapsed() >= wait / 2;
        if standing {
            self.waiters.pop_back()
        } else {
            self.waiters.pop_front()
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        let Some(shared) = self.shared.take() else {
            return;
        };
        let mut queue = shared.lock();
        while let Some(waiter) = queue.next(shared.wait) {
            let place = Place {
                shared: Some(Arc::clone(&shared)),
            };
            match waiter.place.send(place) {
                Ok(()) => return,
                // That waiter stopped waiting as it was chosen; its place must not free itself
                // (the queue is locked here), so it is defused and the next waiter tried.
                Err(mut place) => place.shared = None,
            }
        }
        queue.free += 1;
    }
}

/// Runs the request in one of the places, waiting up to `admission_wait` for one (the module's
/// doc); sheds it with 503 if none came free.
pub(super) async fn admit(State(places): State<Places>, req: Request, next: Next) -> Response {
    let Some(_place) = places.acquire().await else {
        return shed(req, places.shared.limit).await;
    };
    next.run(req).await
}

/// A shed request's body is read and dropped when it is at most this long: hyper keeps a
/// connection open only if the request's body was read to its end, and a new connection for
/// every shed request costs both ends more than reading a few tens of kilobytes.
const DISCARD_MAX: u64 = 64 * 1024;
/// How long a shed request's body may take to arrive; a slower client loses its connection.
const DISCARD_TIME: Duration = Duration::from_millis(100);

async fn shed(req: Request, limit: usize) -> Response {
    let v2 = is_v2(&req);
    let length = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let read = length.is_some_and(|n| n <= DISCARD_MAX)
        && tokio::time::timeout(DISCARD_TIME, discard(req.into_body(), DISCARD_MAX))
            .await
            .is_ok_and(|ended| ended);
    let err = ApiError::unavailable(
        "overloaded",
        format!("the server is handling its limit of {limit} requests; try again shortly"),
    );
    let mut response = if v2 {
        V2Error(err).into_response()
    } else {
        err.into_response()
    };
    // The rest of an unread body would be taken for the next request: the connection ends
    // after this answer (lingering until the client stops sending, crate::linger), and the
    // client is told so instead of finding out on its next request.
    if !read {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Reads `body` to its end, keeping none of it, unless it is longer than `max` bytes; whether it
/// was read to its end.
async fn discard(mut body: axum::body::Body, max: u64) -> bool {
    let mut left = max;
    loop {
        match std::future::poll_fn(|cx| std::pin::Pin::new(&mut body).poll_frame(cx)).await {
            None => return true,
            Some(Err(_)) => return false,
            Some(Ok(frame)) => {
                let n = frame.data_ref().map_or(0, |data| data.len() as u64);
                match left.checked_sub(n) {
                    Some(rest) => left = rest,
                    None => return false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    /// Starts a waiter and lets it join the queue.
    async fn waiter(places: &Places) -> tokio::task::JoinHandle<Option<Place>> {
        let places = places.clone();
        let task = tokio::spawn(async move { places.acquire().await });
        tokio::task::yield_now().await;
        task
    }

    fn waiting(places: &Places) -> usize {
        places.shared.lock().waiters.len()
    }

    #[tokio::test(start_paused = true)]
    async fn places_run_out_and_come_back() {
        let places = Places::new(2, Duration::ZERO);
        let a = places.acquire().await;
        let b = places.acquire().await;
        assert!(a.is_some() && b.is_some());
        assert!(places.acquire().await.is_none(), "a third place with no wait");
        drop(a);
        assert!(places.acquire().await.is_some(), "the freed place");
    }

    /// One place held, a waiter, `gap` later another, then the place freed: the waiter that
    /// got it (the other still waiting), and the other's task.
    async fn served_after(
        places: &Places,
        gap: Duration,
    ) -> (&'static str, Place, tokio::task::JoinHandle<Option<Place>>) {
        let held = places.acquire().await;
        let oldest = waiter(places).await;
        tokio::time::advance(gap).await;
        let newest = waiter(places).await;
        drop(held);
        tokio::task::yield_now().await;
        let (name, served, other) = if oldest.is_finished() {
            ("oldest", oldest, newest)
        } else {
            ("newest", newest, oldest)
        };
        let place = served.await.expect("the served waiter").expect("a place");
        assert!(!other.is_finished(), "one place was freed, one waiter served");
        (name, place, other)
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_queue_is_served_in_order() {
        let places = Places::new(1, WAIT);
        let (served, place, second) = served_after(&places, Duration::from_millis(100)).await;
        assert_eq!(served, "oldest", "the queue was short");
        drop(place);
        assert!(second.await.expect("the second waiter").is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_standing_queue_serves_the_newest_and_sheds_the_oldest_when_its_wait_ends() {
        let places = Places::new(1, WAIT);
        let (served, place, oldest) = served_after(&places, WAIT / 2).await;
        assert_eq!(served, "newest", "the oldest had waited half its wait");
        tokio::time::advance(WAIT / 2).await;
        assert!(
            oldest.await.expect("the oldest waiter").is_none(),
            "shed when its wait ended"
        );
        drop(place);
        assert!(places.acquire().await.is_some(), "the place is free again");
    }

    /// The freed place goes on to the waiter still waiting, whether the one that left was the
    /// oldest (the queue short) or the newest (the queue standing: newest first).
    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_left_is_passed_over() {
        for (gap, oldest_leaves) in [(Duration::ZERO, true), (WAIT / 2, false)] {
            let places = Places::new(1, WAIT);
            let held = places.acquire().await;
            let oldest = waiter(&places).await;
            tokio::time::advance(gap).await;
            let newest = waiter(&places).await;
            let (gone, staying) = if oldest_leaves {
                (oldest, newest)
            } else {
                (newest, oldest)
            };
            gone.abort();
            let _ = gone.await;
            drop(held);
            let served = staying.await.expect("the waiter still waiting");
            assert!(served.is_some(), "gap {gap:?}: the place skips the waiter that left");
            assert_eq!(waiting(&places), 0, "gap {gap:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_place_freed_with_no_one_waiting_is_free_again() {
        let places = Places::new(1, WAIT);
        let held = places.acquire().await;
        let late = waiter(&places).await;
        tokio::time::advance(WAIT).await;
        assert!(late.await.expect("the waiter").is_none());
        drop(held);
        assert!(
            places.acquire().await.is_some(),
            "no place was lost to the waiter that left"
        );
        assert_eq!(waiting(&places), 0);
    }
}
