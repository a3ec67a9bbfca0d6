//! berth's eBPF programs, built into one BPF ELF object
//! (`target/ebpf/bpfel-unknown-none/release/berth-ebpf-programs`) that the
//! user-space loader `berth-ebpf` opens. Map layouts come from `berth-ebpf-common`.
#![no_std]
#![no_main]

mod maps;
mod programs;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic at run time; the verifier rejects any path here.
    loop {}
}
