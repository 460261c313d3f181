#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::wire::{ArpPacket, ArpRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ArpPacket::new_checked(data) {
        let r = ArpRepr::parse(&p).expect("checked packets parse");
        let mut out = [0u8; 28];
        r.emit(&mut out);
        assert_eq!(&out[..], &data[..28]);
        let _ = r.reply_from(r.sender_hw);
    }
});
