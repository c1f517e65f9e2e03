//! [`Few`]: a non-empty list that is almost always one element long, kept in the 16 bytes of
//! a map slot instead of a `Vec` and its own allocation.
//!
//! The per-device tables (a device's sessions on a shard, on the node, the shards interested
//! in a device or a subject) have one entry per device: at 100,000 devices every byte of an
//! entry is 100 KB, and a `Vec` of one element costs its 24 bytes in the slot plus a 32-byte
//! allocation (its first growth reserves four). [`Few`] holds the first element inline and
//! only a second one allocates.

/// A non-empty list in insertion order: the first element inline, the others (rare: a device
/// with several sessions, a topic on several shards) in a boxed `Vec`.
#[derive(Clone, Debug)]
pub(crate) struct Few<T> {
    first: T,
    #[expect(
        clippy::box_collection,
        reason = "a thin 8-byte pointer in the slot instead of a 24-byte Vec: the point of Few"
    )]
    rest: Option<Box<Vec<T>>>,
}

/// What [`Few::remove`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// The element was not in the list.
    Absent,
    /// Removed; the list still holds others.
    Some,
    /// It was the only element: the list must be dropped (it cannot be empty).
    Last,
}

impl<T: Copy + PartialEq> Few<T> {
    /// A list of `first`.
    pub(crate) fn new(first: T) -> Few<T> {
        Few { first, rest: None }
    }

    /// Number of elements (at least 1).
    pub(crate) fn len(&self) -> usize {
        1 + self.rest.as_ref().map_or(0, |r| r.len())
    }

    /// True when `x` is in the list.
    pub(crate) fn contains(&self, x: T) -> bool {
        self.first == x || self.rest.as_ref().is_some_and(|r| r.contains(&x))
    }

    /// Appends `x` (the caller keeps duplicates out when it must).
    pub(crate) fn push(&mut self, x: T) {
        self.rest.get_or_insert_with(Box::default).push(x);
    }

    /// The elements in order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = T> + '_ {
        std::iter::once(self.first).chain(self.rest.iter().flat_map(|r| r.iter().copied()))
    }

    /// The elements in order, copied out (to iterate while the owner of the list changes).
    pub(crate) fn to_vec(&self) -> Vec<T> {
        self.iter().collect()
    }

    /// Takes the first (oldest) element when there is more than one; `None` when it is the
    /// only one (the list cannot become empty).
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        let rest = self.rest.as_mut()?;
        debug_assert!(!rest.is_empty(), "an empty rest is dropped, never kept");
        let next = rest.remove(0);
        if rest.is_empty() {
            self.rest = None;
        }
        Some(std::mem::replace(&mut self.first, next))
    }

    /// Removes every occurrence of `x`.
    pub(crate) fn remove(&mut self, x: T) -> Removed {
        let mut found = false;
        if let Some(rest) = self.rest.as_mut() {
            let before = rest.len();
            rest.retain(|y| *y != x);
            found = rest.len() != before;
        }
        if self.first == x {
            found = true;
            match self.rest.as_mut() {
                Some(rest) if !rest.is_empty() => self.first = rest.remove(0),
                _ => return Removed::Last,
            }
        }
        if self.rest.as_ref().is_some_and(|r| r.is_empty()) {
            self.rest = None;
        }
        if found {
            Removed::Some
        } else {
            Removed::Absent
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_element_lives_inline_in_16_bytes() {
        assert_eq!(std::mem::size_of::<Few<u64>>(), 16);
        assert_eq!(std::mem::size_of::<Few<u16>>(), 16);
        let f = Few::new(7u64);
        assert!(f.rest.is_none());
        assert_eq!(f.len(), 1);
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![7]);
    }

    #[test]
    fn keeps_order_and_never_empties() {
        let mut f = Few::new(1u64);
        f.push(2);
        f.push(3);
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![1, 2, 3]);
        assert!(f.contains(2) && !f.contains(4));
        assert_eq!(f.pop_front(), Some(1));
        assert_eq!(f.iter().collect::<Vec<_>>(), vec![2, 3]);
        assert_eq!(f.remove(9), Removed::Absent);
        assert_eq!(f.remove(3), Removed::Some);
        assert!(f.rest.is_none(), "an emptied rest is freed");
        assert_eq!(f.pop_front(), None, "the only element stays");
        assert_eq!(f.remove(2), Removed::Last);
        let mut g = Few::new(5u16);
        g.push(6);
        assert_eq!(g.remove(5), Removed::Some);
        assert_eq!(g.iter().collect::<Vec<_>>(), vec![6]);
        assert!(g.rest.is_none());
    }
}
