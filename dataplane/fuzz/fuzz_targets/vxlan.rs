#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::wire::{VxlanPacket, VxlanRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = VxlanPacket::new_checked(data) {
        let _ = p.payload();
        if let Ok(r) = VxlanRepr::parse(&p) {
            let mut out = [0u8; 8];
            r.emit(&mut out);
            assert_eq!(VxlanRepr::parse(&VxlanPacket::new_checked(&out[..]).unwrap()).unwrap(), r);
        }
    }
});
