//! A fixed-size array in its own anonymous mapping, zero-filled by the kernel and backed by
//! transparent huge pages where the system allows it (THP `madvise` mode is the common
//! default).
//!
//! Why not a `Vec`: a flow lookup lands on a random slot, so with 4 KiB pages nearly every
//! lookup in a multi-megabyte table also misses the TLB, and in a VM (nested paging) a page walk
//! costs about as much as the cache miss itself. The profile of the bench's established-flow
//! run had ~15 % of the worker on that one load. `MADV_HUGEPAGE` only affects pages faulted
//! after it, and `vec![x; n]` writes every element first, so the advice has to come between
//! the mapping and the first touch — hence a mapping of our own. The array is pre-faulted at
//! construction: the packet path never takes a page fault, and the memory a table costs shows
//! in RSS from the start.

use std::ptr::NonNull;

/// Element types: all-zero bytes must be a valid value, because the kernel hands out zeroed
/// pages and the array is never written before use (`bytemuck::Zeroable` states exactly that,
/// and its derive checks it field by field).
pub trait ZeroValid: bytemuck::Zeroable + Copy {}
impl<T: bytemuck::Zeroable + Copy> ZeroValid for T {}

const HUGE_PAGE: usize = 2 << 20;
const PAGE: usize = 4096;

pub struct HugeArray<T: ZeroValid> {
    ptr: NonNull<T>,
    len: usize,
    map: *mut libc::c_void,
    map_len: usize,
}

// SAFETY: HugeArray owns its mapping exclusively, like a Box<[T]>.
unsafe impl<T: ZeroValid + Send> Send for HugeArray<T> {}
// SAFETY: shared access only hands out &T.
unsafe impl<T: ZeroValid + Sync> Sync for HugeArray<T> {}

#[derive(Debug, thiserror::Error)]
#[error("cannot map {bytes} bytes for a table: {source}")]
pub struct MapError {
    bytes: usize,
    source: std::io::Error,
}

impl<T: ZeroValid> HugeArray<T> {
    /// `len` zeroed elements (`len` ≥ 1).
    pub fn zeroed(len: usize) -> Result<HugeArray<T>, MapError> {
        let len = len.max(1);
        let bytes = len
            .checked_mul(size_of::<T>())
            .and_then(|b| b.checked_next_multiple_of(PAGE))
            .ok_or_else(|| MapError {
                bytes: usize::MAX,
                source: std::io::Error::from(std::io::ErrorKind::OutOfMemory),
            })?;
        // Large arrays get a 2 MiB-aligned start inside a slightly larger mapping, so whole
        // huge pages cover them.
        let huge = bytes >= HUGE_PAGE;
        let map_len = if huge { bytes + HUGE_PAGE } else { bytes };
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let map = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if map == libc::MAP_FAILED {
            return Err(MapError {
                bytes: map_len,
                source: std::io::Error::last_os_error(),
            });
        }
        let start = if huge {
            (map as usize).next_multiple_of(HUGE_PAGE)
        } else {
            map as usize
        };
        if huge {
            // SAFETY: [start, start + bytes) lies inside the mapping just created. Advisory:
            // without THP the array simply stays on 4 KiB pages.
            unsafe {
                libc::madvise(start as *mut libc::c_void, bytes, libc::MADV_HUGEPAGE);
            }
        }
        // Pre-fault: one write per page (zero, which the page already holds).
        for off in (0..bytes).step_by(PAGE) {
            // SAFETY: inside the writable mapping.
            unsafe { std::ptr::write_volatile((start + off) as *mut u8, 0) };
        }
        Ok(HugeArray {
            // SAFETY: mmap never returns null on success, and start ≥ map.
            ptr: unsafe { NonNull::new_unchecked(start as *mut T) },
            len,
            map,
            map_len,
        })
    }

    /// The address of element `i` for a prefetch hint; never dereferenced here.
    #[inline]
    pub fn addr_of(&self, i: usize) -> *const T {
        self.ptr.as_ptr().wrapping_add(i.min(self.len - 1))
    }
}

impl<T: ZeroValid> std::ops::Deref for HugeArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `len` zero-valid (hence initialised) elements, mapped for our lifetime,
        // suitably aligned (page-aligned start).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroValid> std::ops::DerefMut for HugeArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: ZeroValid> Drop for HugeArray<T> {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping `zeroed` created; no reference outlives self.
        unsafe {
            libc::munmap(self.map, self.map_len);
        }
    }
}

/// Hints the CPU to start loading the cache line at `p` (no fault, no effect on semantics).
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_zeroed_and_keeps_writes() {
        for len in [1, 1000, (4 << 20) / 8 + 3] {
            let mut a = HugeArray::<u64>::zeroed(len).unwrap();
            assert_eq!(a.len(), len);
            assert!(a.iter().all(|&x| x == 0));
            a[len - 1] = 7;
            a[len / 2] = 6;
            assert_eq!((a[len / 2], a[len - 1]), (6, if len == 1 { 6 } else { 7 }));
        }
    }

    #[test]
    fn large_arrays_start_on_a_huge_page_boundary() {
        let a = HugeArray::<u64>::zeroed((8 << 20) / 8).unwrap();
        assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0);
    }
}
