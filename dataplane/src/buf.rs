//! The buffer abstraction the pipeline runs over.
//!
//! A DPDK mbuf (in `ffi/`) and the in-memory [`HeapBuf`] both implement [`PacketBuf`]: a
//! contiguous data region with headroom in front and tailroom behind, so that
//! encapsulation writes outer headers into headroom without moving the payload.

/// A single-segment packet buffer with adjustable headroom and tailroom.
pub trait PacketBuf {
    /// The packet bytes.
    fn data(&self) -> &[u8];
    /// The packet bytes, writable.
    fn data_mut(&mut self) -> &mut [u8];
    /// Free bytes in front of the data.
    fn headroom(&self) -> usize;
    /// Free bytes behind the data.
    fn tailroom(&self) -> usize;
    /// Grows the data by `n` bytes at the front and returns the whole new data region;
    /// `None` (and no change) without enough headroom.
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]>;
    /// Removes `n` bytes from the front; `false` (and no change) if the data is shorter.
    fn adj(&mut self, n: usize) -> bool;
    /// Grows the data by `n` bytes at the back and returns the new bytes; `None` (and no
    /// change) without enough tailroom.
    fn append(&mut self, n: usize) -> Option<&mut [u8]>;
    /// Removes `n` bytes from the back; `false` (and no change) if the data is shorter.
    fn trim(&mut self, n: usize) -> bool;
    /// Data length.
    fn len(&self) -> usize {
        self.data().len()
    }
    /// True when the data is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Headroom DPDK reserves in every mbuf (`RTE_PKTMBUF_HEADROOM`); [`HeapBuf`] uses the same
/// so tests exercise the layout the DPDK path sees.
pub const DEFAULT_HEADROOM: usize = 128;

/// A packet buffer in ordinary memory, allocated once and reused.
#[derive(Clone)]
pub struct HeapBuf {
    mem: Box<[u8]>,
    start: usize,
    end: usize,
}

impl HeapBuf {
    /// An empty buffer of `capacity` bytes whose data starts after `headroom` bytes.
    pub fn new(capacity: usize, headroom: usize) -> HeapBuf {
        let headroom = headroom.min(capacity);
        HeapBuf {
            mem: vec![0u8; capacity].into_boxed_slice(),
            start: headroom,
            end: headroom,
        }
    }

    /// A buffer holding `frame`, with [`DEFAULT_HEADROOM`] in front and `tailroom` behind.
    pub fn from_frame(frame: &[u8], tailroom: usize) -> HeapBuf {
        let mut b = HeapBuf::new(DEFAULT_HEADROOM + frame.len() + tailroom, DEFAULT_HEADROOM);
        b.reset(frame);
        b
    }

    /// Replaces the data with `frame` at the default headroom, as a driver does when it
    /// receives into a recycled buffer. Returns `false` (and leaves the buffer empty) if the
    /// frame does not fit.
    pub fn reset(&mut self, frame: &[u8]) -> bool {
        let start = DEFAULT_HEADROOM.min(self.mem.len());
        if start + frame.len() > self.mem.len() {
            self.start = start;
            self.end = start;
            return false;
        }
        self.mem[start..start + frame.len()].copy_from_slice(frame);
        self.start = start;
        self.end = start + frame.len();
        true
    }
}

impl core::fmt::Debug for HeapBuf {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("HeapBuf")
            .field("len", &self.len())
            .field("headroom", &self.start)
            .field("tailroom", &(self.mem.len() - self.end))
            .finish()
    }
}

impl PacketBuf for HeapBuf {
    #[inline]
    fn data(&self) -> &[u8] {
        &self.mem[self.start..self.end]
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.start..self.end]
    }
    #[inline]
    fn headroom(&self) -> usize {
        self.start
    }
    #[inline]
    fn tailroom(&self) -> usize {
        self.mem.len() - self.end
    }
    #[inline]
    fn prepend(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.start {
            return None;
        }
        self.start -= n;
        Some(&mut self.mem[self.start..self.end])
    }
    #[inline]
    fn adj(&mut self, n: usize) -> bool {
        if n > self.end - self.start {
            return false;
        }
        self.start += n;
        true
    }
    #[inline]
    fn append(&mut self, n: usize) -> Option<&mut [u8]> {
        if n > self.mem.len() - self.end {
            return None;
        }
        let old = self.end;
        self.end += n;
        Some(&mut self.mem[old..self.end])
    }
    #[inline]
    fn trim(&mut self, n: usize) -> bool {
        if n > self.end - self.start {
            return false;
        }
        self.end -= n;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_accounting() {
        let mut b = HeapBuf::from_frame(&[1, 2, 3], 4);
        assert_eq!(
            (b.headroom(), b.len(), b.tailroom()),
            (DEFAULT_HEADROOM, 3, 4)
        );
        b.prepend(2).unwrap()[..2].copy_from_slice(&[9, 9]);
        assert_eq!(b.data(), &[9, 9, 1, 2, 3]);
        b.append(4).unwrap().copy_from_slice(&[7; 4]);
        assert!(b.append(1).is_none());
        assert!(b.adj(2));
        assert!(b.trim(4));
        assert_eq!(b.data(), &[1, 2, 3]);
        assert!(!b.adj(4) && !b.trim(4));
        assert!(b.prepend(DEFAULT_HEADROOM + 1).is_none());
        assert_eq!(b.data(), &[1, 2, 3]);
        assert!(!b.reset(&[0; 100]));
        assert!(b.is_empty());
    }
}
