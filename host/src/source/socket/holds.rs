//! Emits waiting for an offline client (or an empty room) to come online.
//!
//! Used only by the socket server's emitter task (`offline = "hold"`). Holds are
//! kept per room in arrival order, bounded in total (`hold_max`) and in time
//! (`hold_ms`): whatever does not fit or expires is handed back so the caller can
//! log and count it. Nothing leaves this structure except through a return value.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

pub struct Holds<T> {
    rooms: HashMap<String, VecDeque<(Instant, T)>>,
    len: usize,
    max: usize,
}

impl<T> Holds<T> {
    pub fn new(max: usize) -> Holds<T> {
        Holds { rooms: HashMap::new(), len: 0, max }
    }

    /// Holds `item` for `room` until `until`; gives it back when `max` are held.
    pub fn push(&mut self, room: &str, item: T, until: Instant) -> Result<(), T> {
        if self.len >= self.max {
            return Err(item);
        }
        self.rooms.entry(room.to_string()).or_default().push_back((until, item));
        self.len += 1;
        Ok(())
    }

    /// Everything held for `room`, oldest first.
    pub fn take(&mut self, room: &str) -> Vec<T> {
        let items: Vec<T> = self.rooms.remove(room).into_iter().flatten().map(|(_, t)| t).collect();
        self.len -= items.len();
        items
    }

    /// Removes and returns what expired at `now`, with its room.
    pub fn expire(&mut self, now: Instant) -> Vec<(String, T)> {
        let mut out = Vec::new();
        self.rooms.retain(|room, q| {
            while q.front().is_some_and(|(until, _)| *until <= now) {
                let (_, item) = q.pop_front().expect("front exists");
                out.push((room.clone(), item));
            }
            !q.is_empty()
        });
        self.len -= out.len();
        out
    }

    /// Removes and returns everything.
    pub fn drain(&mut self) -> Vec<(String, T)> {
        self.len = 0;
        self.rooms.drain().flat_map(|(room, q)| q.into_iter().map(move |(_, t)| (room.clone(), t))).collect()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn holds_are_bounded_ordered_and_expire() {
        let t0 = Instant::now();
        let mut h = Holds::new(3);
        h.push("a", 1, t0 + Duration::from_secs(1)).unwrap();
        h.push("b", 2, t0 + Duration::from_secs(5)).unwrap();
        h.push("a", 3, t0 + Duration::from_secs(5)).unwrap();
        assert_eq!(h.push("c", 4, t0), Err(4), "a fourth hold does not fit");
        assert_eq!(h.expire(t0 + Duration::from_secs(2)), vec![("a".to_string(), 1)]);
        assert_eq!(h.len(), 2);
        assert_eq!(h.take("a"), vec![3]);
        assert!(h.take("a").is_empty());
        assert_eq!(h.drain(), vec![("b".to_string(), 2)]);
        assert!(h.is_empty());
    }
}
