//! A view that reads at most a budget of bytes: what a caller on a thread that must not
//! stall for long (an async runtime's) puts around a cached snapshot.

use crate::{Direction, EntryIter, ReadView, Result, Space, StorageError};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Wraps a view: reads return at most `budget` bytes of keys and values in all; the read
/// that would go past it fails with [`StorageError::NotCached`] and sets
/// [`ReadView::missed_cache`], as a read that needs a file does. (A scan that stops early
/// counts only what it returned.)
pub(crate) struct Budgeted<'a> {
    inner: Box<dyn ReadView + 'a>,
    left: AtomicUsize,
    spent: AtomicBool,
}

impl<'a> Budgeted<'a> {
    pub(crate) fn new(inner: Box<dyn ReadView + 'a>, budget: usize) -> Self {
        Budgeted { inner, left: AtomicUsize::new(budget), spent: AtomicBool::new(false) }
    }

    /// A view whose every read fails as a miss (`inner` is never read): for a backend that
    /// cannot make a snapshot without waiting.
    pub(crate) fn spent(inner: Box<dyn ReadView + 'a>) -> Self {
        Budgeted { inner, left: AtomicUsize::new(0), spent: AtomicBool::new(true) }
    }

    /// Fails once the budget is spent.
    fn check(&self) -> Result<()> {
        self.charge(0)
    }

    /// Takes `bytes` from the budget, or fails once it is spent.
    fn charge(&self, bytes: usize) -> Result<()> {
        let left = self.left.load(Ordering::Relaxed);
        if self.spent.load(Ordering::Relaxed) || bytes > left {
            self.spent.store(true, Ordering::Relaxed);
            return Err(StorageError::NotCached(format!("a cached read's budget of bytes is spent ({left} left)")));
        }
        self.left.store(left - bytes, Ordering::Relaxed);
        Ok(())
    }
}

impl ReadView for Budgeted<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.check()?;
        let value = self.inner.get(space, key)?;
        self.charge(key.len() + value.as_ref().map_or(0, Vec::len))?;
        Ok(value)
    }

    fn get_many(&self, space: Space, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.check()?;
        let values = self.inner.get_many(space, keys)?;
        let bytes = keys.iter().map(|k| k.len()).sum::<usize>() + values.iter().flatten().map(Vec::len).sum::<usize>();
        self.charge(bytes)?;
        Ok(values)
    }

    fn scan<'s>(&'s self, space: Space, start: &[u8], end: Option<&[u8]>, direction: Direction) -> EntryIter<'s> {
        if let Err(e) = self.check() {
            return Box::new(std::iter::once(Err(e)));
        }
        let mut failed = false;
        Box::new(self.inner.scan(space, start, end, direction).map_while(move |entry| {
            if failed {
                return None;
            }
            let charged = entry.and_then(|(k, v)| self.charge(k.len() + v.len()).map(|()| (k, v)));
            failed = charged.is_err();
            Some(charged)
        }))
    }

    fn missed_cache(&self) -> bool {
        self.spent.load(Ordering::Relaxed) || self.inner.missed_cache()
    }

    fn visit(
        &self,
        space: Space,
        start: &[u8],
        end: Option<&[u8]>,
        direction: Direction,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<()> {
        self.check()?;
        let mut over = None;
        self.inner.visit(space, start, end, direction, &mut |k, v| match self.charge(k.len() + v.len()) {
            Ok(()) => visit(k, v),
            Err(e) => {
                over = Some(e);
                false
            }
        })?;
        over.map_or(Ok(()), Err)
    }
}
