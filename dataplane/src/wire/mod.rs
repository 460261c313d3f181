//! Wire formats: zero-copy views over byte buffers and parsed representations.
//!
//! One protocol per file, in the style of smoltcp's `wire` module. Each protocol offers:
//!
//! * a view `Packet<T: AsRef<[u8]>>` (or `Frame`) over a buffer, with getters that need a
//!   readable buffer and setters that need a writable one;
//! * a `Repr` that parses from and emits into a view.
//!
//! # Promises
//!
//! * **No parser panics on any input.** `new_checked` rejects every buffer too short for the
//!   fields its accessors read; once it has accepted a buffer, no getter of that view can
//!   panic, and `payload()` is always in bounds. `Repr::parse` never panics. These promises
//!   are checked by property tests in each file and by one cargo-fuzz target per parser
//!   (`dataplane/fuzz/`).
//! * `Repr::emit` never panics on a buffer of at least `Repr::buffer_len()` bytes.
//! * `new_unchecked` makes no promise: accessors may panic on a short buffer. The data path
//!   uses it only on buffers it has just written or already checked.
//!
//! Errors are small `Copy` values: each [`WireError`] variant maps to a drop counter.

pub mod arp;
pub mod checksum;
pub mod esp;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod udp;
pub mod vxlan;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use esp::{EspPacket, Spi};
pub use ethernet::{EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
pub use icmp::{IcmpEchoRepr, IcmpPacket};
pub use ipv4::{IpProtocol, Ipv4Packet, Ipv4Repr};
pub use udp::{UdpPacket, UdpRepr};
pub use vxlan::{Vni, VxlanPacket, VxlanRepr};

/// Why a buffer was not accepted as a packet of some protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WireError {
    /// The buffer is shorter than the header, or than a length field says.
    Truncated,
    /// A field holds a value the protocol forbids (bad version, length below minimum, ...).
    Malformed,
    /// A checksum did not verify.
    Checksum,
    /// Well-formed, but a variant this implementation does not handle (ARP for a non
    /// Ethernet/IPv4 pair, for example).
    Unsupported,
}

impl core::fmt::Display for WireError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            WireError::Truncated => "truncated packet",
            WireError::Malformed => "malformed packet",
            WireError::Checksum => "bad checksum",
            WireError::Unsupported => "unsupported packet",
        })
    }
}

impl std::error::Error for WireError {}

/// Result of wire parsing.
pub type Result<T> = core::result::Result<T, WireError>;

#[inline]
pub(crate) fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
