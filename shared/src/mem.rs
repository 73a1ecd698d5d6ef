//! Memory for large, randomly accessed tables (the flow table, the Maglev
//! tables): allocated once, off the per-packet path, on transparent huge pages
//! where the kernel allows, so a lookup costs a cache miss but rarely a TLB miss.

/// Advises the kernel to back `bytes` of `v`'s spare capacity with huge pages
/// (only allocations of 4 MiB and more, in whole 2 MiB pages). Harmless when
/// transparent huge pages are off.
fn advise_huge<T>(v: &mut Vec<T>, bytes: usize) {
    if bytes < 4 << 20 {
        return;
    }
    let huge = 2usize << 20;
    let start = v.as_mut_ptr() as usize;
    let aligned = (start + huge - 1) & !(huge - 1);
    let end = (start + bytes) & !(huge - 1);
    if end > aligned {
        // SAFETY: the range lies inside this vector's own allocation; advice
        // changes no contents and a failure is harmless (plain pages).
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

/// An empty vector with room for `n` elements, on huge pages where possible.
/// Its pages are faulted in as it is filled.
pub fn huge_vec<T>(n: usize) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(n);
    advise_huge(&mut out, n * std::mem::size_of::<T>());
    out
}

/// `n` copies of `v` on huge pages where possible, written element by element
/// so every page is faulted in now, at start, rather than as page-fault
/// latency under load.
pub fn prefaulted<T: Clone>(n: usize, v: T) -> Vec<T> {
    let mut out = huge_vec(n);
    out.resize(n, v);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_have_the_asked_size_and_contents() {
        let v = prefaulted(5 << 20, 7u8);
        assert_eq!(v.len(), 5 << 20);
        assert!(v.iter().all(|&b| b == 7));
        let w: Vec<u16> = huge_vec(3);
        assert!(w.is_empty() && w.capacity() >= 3);
    }
}
