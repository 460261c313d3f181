#![no_main]
use libfuzzer_sys::fuzz_target;
use swarmgate_dataplane::wire::{EthernetFrame, EthernetRepr};

fuzz_target!(|data: &[u8]| {
    if let Ok(f) = EthernetFrame::new_checked(data) {
        let r = EthernetRepr::parse(&f).expect("checked frames parse");
        let _ = (f.payload(), f.vlan_tci(), f.src_addr(), f.dst_addr());
        let mut out = vec![0u8; r.buffer_len()];
        r.emit(&mut out);
        assert_eq!(&out[..], &data[..r.buffer_len()]);
    }
});
