//! A vector shared between snapshots page by page: copying it copies one pointer per page,
//! and changing one element copies that element's page only (copy-on-write), so a snapshot
//! built from the previous one costs what changed, not what it holds.
//!
//! A read is two dependent loads (the page, then the element) instead of one; the pages are
//! small enough (`PAGE` elements) that the hot ones stay in cache.

use std::sync::Arc;

/// Elements per page (a power of two).
const PAGE_BITS: u32 = 7;
const PAGE: usize = 1 << PAGE_BITS;
const PAGE_MASK: usize = PAGE - 1;

#[derive(Clone, Debug)]
pub(super) struct Paged<T> {
    pages: Arc<[Arc<[T]>]>,
    len: usize,
}

impl<T: Clone + Default> Paged<T> {
    /// `len` default elements.
    pub(super) fn new(len: usize) -> Paged<T> {
        let pages = len.div_ceil(PAGE);
        Paged {
            pages: (0..pages).map(|_| blank_page()).collect(),
            len,
        }
    }

    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        self.pages.get(i >> PAGE_BITS)?.get(i & PAGE_MASK)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// The page table itself (tests check what two snapshots share).
    #[cfg(test)]
    pub(super) fn pages_arc(&self) -> Arc<[Arc<[T]>]> {
        Arc::clone(&self.pages)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &T> {
        self.pages.iter().flat_map(|p| p.iter()).take(self.len)
    }

    /// Starts a series of changes; [`PagedEdit::finish`] makes the new vector. Pages no change
    /// touches stay shared with `self`, and so does the page table if nothing changes.
    pub(super) fn edit(&self) -> PagedEdit<T> {
        PagedEdit {
            base: Arc::clone(&self.pages),
            pages: None,
            len: self.len,
        }
    }
}

fn blank_page<T: Clone + Default>() -> Arc<[T]> {
    (0..PAGE).map(|_| T::default()).collect()
}

/// A [`Paged`] being changed: the page table is copied at the first change, and a page the
/// first time an element of its is set.
pub(super) struct PagedEdit<T> {
    base: Arc<[Arc<[T]>]>,
    pages: Option<Vec<Arc<[T]>>>,
    len: usize,
}

impl<T: Clone + Default> PagedEdit<T> {
    #[inline]
    pub(super) fn get(&self, i: usize) -> Option<&T> {
        if i >= self.len {
            return None;
        }
        let pages: &[Arc<[T]>] = match &self.pages {
            Some(p) => p,
            None => &self.base,
        };
        pages.get(i >> PAGE_BITS)?.get(i & PAGE_MASK)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Sets element `i`, growing the vector (with default elements) to reach it.
    pub(super) fn set(&mut self, i: usize, value: T) {
        if i >= self.len {
            self.len = i + 1;
        }
        let pages = self.pages.get_or_insert_with(|| self.base.to_vec());
        let p = i >> PAGE_BITS;
        while pages.len() <= p {
            pages.push(blank_page());
        }
        let Some(page) = pages.get_mut(p) else {
            return;
        };
        // A page this edit already copied is unique; a shared one is copied first.
        if Arc::get_mut(page).is_none() {
            *page = page.iter().cloned().collect();
        }
        if let Some(slot) = Arc::get_mut(page).and_then(|pg| pg.get_mut(i & PAGE_MASK)) {
            *slot = value;
        }
    }

    pub(super) fn finish(self) -> Paged<T> {
        Paged {
            pages: match self.pages {
                Some(p) => p.into(),
                None => self.base,
            },
            len: self.len,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_edit_copies_only_the_pages_it_touches() {
        let mut e = Paged::<u32>::new(0).edit();
        for i in 0..1000 {
            e.set(i, i as u32);
        }
        let a = e.finish();
        let mut e = a.edit();
        e.set(5, 5000);
        e.set(2000, 7);
        let b = e.finish();
        assert_eq!((a.get(5), b.get(5)), (Some(&5), Some(&5000)));
        assert_eq!(
            (a.get(2000), b.get(2000), b.get(1999)),
            (None, Some(&7), Some(&0))
        );
        assert_eq!(b.len(), 2001);
        // Every page but the first (and the new ones) is the same allocation in both.
        let shared = (1..a.pages.len())
            .filter(|&p| Arc::ptr_eq(&a.pages[p], &b.pages[p]))
            .count();
        assert_eq!(shared, a.pages.len() - 1);
        assert_eq!(b.iter().filter(|&&x| x == 5000).count(), 1);
        assert_eq!(a.iter().count(), 1000);
    }
}
