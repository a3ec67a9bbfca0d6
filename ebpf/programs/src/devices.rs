//! berth's device cgroup program (`BPF_PROG_TYPE_CGROUP_DEVICE`), built into its own
//! object (`target/ebpf/bpfel-unknown-none/release/berth-ebpf-devices`) so that
//! loading it for each container creates no other program's maps. The rules are
//! read-only globals the loader sets (`berth_runtime::devices`): the OCI
//! `linux.resources.devices` list plus runc's defaults. The last matching rule decides;
//! a request no rule matches is denied (EPERM), as runc's generated filter does.
#![no_std]
#![no_main]

use aya_ebpf::{macros::cgroup_device, programs::DeviceContext};
use berth_ebpf_common::{DeviceRule, MAX_DEVICE_RULES};

#[unsafe(no_mangle)]
static DEVICE_RULES: [DeviceRule; MAX_DEVICE_RULES] = [DeviceRule::NONE; MAX_DEVICE_RULES];

#[unsafe(no_mangle)]
static DEVICE_RULE_COUNT: u32 = 0;

#[cgroup_device]
pub fn berth_devices(ctx: DeviceContext) -> i32 {
    // SAFETY: the kernel passes a valid bpf_cgroup_dev_ctx for the length of the run.
    let dev = unsafe { &*ctx.device };
    let kind = dev.access_type & 0xffff;
    let access = dev.access_type >> 16;
    // SAFETY: a read of a global the loader froze before the program was verified;
    // volatile so the compiler does not fold the initializer in.
    let count = unsafe { core::ptr::read_volatile(&DEVICE_RULE_COUNT) } as usize;
    let mut verdict = 0;
    let mut i = 0;
    while i < MAX_DEVICE_RULES && i < count {
        // SAFETY: as above; `i` is below the array's length.
        let rule = unsafe { core::ptr::read_volatile(&DEVICE_RULES[i]) };
        if rule.matches(kind, dev.major, dev.minor, access) {
            verdict = rule.allow as i32;
        }
        i += 1;
    }
    verdict
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // eBPF programs cannot panic at run time; the verifier rejects any path here.
    loop {}
}
