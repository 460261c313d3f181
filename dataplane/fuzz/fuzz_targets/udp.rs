#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::wire::{UdpPacket, UdpRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = UdpPacket::new_checked(data) {
        let r = UdpRepr::parse(&p).expect("checked datagrams parse");
        assert_eq!(r.payload_len, p.payload().len());
        let _ = p.verify_checksum([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
    }
});
