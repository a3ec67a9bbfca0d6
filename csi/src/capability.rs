//! Which `VolumeCapability`s the driver serves: `mount` access (a directory) and
//! `block` access (a loop-attached image file) in the single-node access modes.
//! Multi-node modes are refused: a volume lives on one node.

use crate::error::{Error, Result};
use crate::proto::VolumeCapability;
use crate::proto::volume_capability::{AccessType, access_mode::Mode};

/// Mount flags a publish may ask for; anything else is refused with its name.
pub const MOUNT_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "nosuid",
    "nodev",
    "noexec",
    "noatime",
    "nodiratime",
    "relatime",
];

/// Checks the shape of `caps` (INVALID_ARGUMENT for a missing field) and returns why
/// the driver cannot serve them, if it cannot.
pub fn unsupported(caps: &[VolumeCapability]) -> Result<Option<String>> {
    if caps.is_empty() {
        return Err(Error::InvalidArgument(
            "volume_capabilities is required".into(),
        ));
    }
    for cap in caps {
        if let Some(reason) = check_one(cap)? {
            return Ok(Some(reason));
        }
    }
    Ok(None)
}

/// INVALID_ARGUMENT unless the driver can serve every one of `caps`.
pub fn require_supported(caps: &[VolumeCapability]) -> Result<()> {
    match unsupported(caps)? {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidArgument(reason)),
    }
}

/// Like [`require_supported`] for the node calls, whose error tables make a capability
/// the volume cannot serve FAILED_PRECONDITION ("Exceeds capabilities", spec.md
/// NodeStageVolume and NodePublishVolume errors).
pub fn require_supported_on_node(cap: &VolumeCapability) -> Result<()> {
    match check_one(cap)? {
        None => Ok(()),
        Some(reason) => Err(Error::FailedPrecondition(reason)),
    }
}

/// The access mode of `cap` (UNKNOWN when unset).
pub fn mode(cap: &VolumeCapability) -> Mode {
    cap.access_mode
        .and_then(|m| Mode::try_from(m.mode).ok())
        .unwrap_or(Mode::Unknown)
}

fn check_one(cap: &VolumeCapability) -> Result<Option<String>> {
    let Some(access_type) = &cap.access_type else {
        return Err(Error::InvalidArgument(
            "volume_capability.access_type is required (mount or block)".into(),
        ));
    };
    let Some(mode) = cap.access_mode else {
        return Err(Error::InvalidArgument(
            "volume_capability.access_mode is required".into(),
        ));
    };
    let mode = Mode::try_from(mode.mode).unwrap_or(Mode::Unknown);
    match mode {
        Mode::Unknown => {
            return Err(Error::InvalidArgument(
                "volume_capability.access_mode.mode is UNKNOWN".into(),
            ));
        }
        Mode::SingleNodeWriter
        | Mode::SingleNodeReaderOnly
        | Mode::SingleNodeSingleWriter
        | Mode::SingleNodeMultiWriter => {}
        Mode::MultiNodeReaderOnly | Mode::MultiNodeSingleWriter | Mode::MultiNodeMultiWriter => {
            return Ok(Some(format!(
                "access mode {} is not supported: a berth-csi volume is a directory on one node",
                mode.as_str_name()
            )));
        }
    }
    match access_type {
        AccessType::Block(_) => Ok(None),
        AccessType::Mount(mount) => {
            for flag in &mount.mount_flags {
                if !MOUNT_FLAGS.contains(&flag.as_str()) {
                    return Ok(Some(format!(
                        "mount flag {flag:?} is not supported (supported: {})",
                        MOUNT_FLAGS.join(", ")
                    )));
                }
            }
            Ok(None)
        }
    }
}

/// Whether `caps` ask for a block volume: all block, or all mount (INVALID_ARGUMENT for
/// a mix, which no one volume can be).
pub fn is_block(caps: &[VolumeCapability]) -> Result<bool> {
    let block = caps
        .iter()
        .filter(|c| matches!(c.access_type, Some(AccessType::Block(_))))
        .count();
    match block {
        0 => Ok(false),
        n if n == caps.len() => Ok(true),
        _ => Err(Error::InvalidArgument(
            "volume_capabilities mix block and mount access; a volume is one or the other".into(),
        )),
    }
}

/// FAILED_PRECONDITION unless `cap`'s access type is the volume's (spec.md, node calls:
/// "Exceeds capabilities").
pub fn require_kind(cap: &VolumeCapability, block: bool) -> Result<()> {
    let wants_block = matches!(cap.access_type, Some(AccessType::Block(_)));
    if wants_block == block {
        return Ok(());
    }
    Err(Error::FailedPrecondition(if block {
        "the volume is a block volume; mount access was asked for".into()
    } else {
        "the volume is a filesystem volume; block access was asked for".into()
    }))
}

/// Whether the access mode of `cap` only reads.
pub fn is_reader_only(cap: &VolumeCapability) -> bool {
    cap.access_mode.is_some_and(|m| {
        m.mode == Mode::SingleNodeReaderOnly as i32 || m.mode == Mode::MultiNodeReaderOnly as i32
    })
}

/// The mount flags of `cap` (empty for block).
pub fn mount_flags(cap: &VolumeCapability) -> &[String] {
    match &cap.access_type {
        Some(AccessType::Mount(m)) => &m.mount_flags,
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::volume_capability::{AccessMode, BlockVolume, MountVolume};

    fn cap(access_type: Option<AccessType>, mode: Mode) -> VolumeCapability {
        VolumeCapability {
            access_type,
            access_mode: Some(AccessMode { mode: mode as i32 }),
        }
    }

    fn mount() -> Option<AccessType> {
        Some(AccessType::Mount(MountVolume::default()))
    }

    #[test]
    fn single_node_mount_is_served() {
        assert_eq!(
            unsupported(&[cap(mount(), Mode::SingleNodeWriter)]).expect("shape"),
            None
        );
    }

    #[test]
    fn missing_fields_are_invalid_arguments() {
        assert!(matches!(unsupported(&[]), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            unsupported(&[cap(None, Mode::SingleNodeWriter)]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            unsupported(&[cap(mount(), Mode::Unknown)]),
            Err(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn multi_node_and_unknown_flags_are_unsupported_block_is_served() {
        let block = cap(
            Some(AccessType::Block(BlockVolume {})),
            Mode::SingleNodeWriter,
        );
        assert_eq!(
            unsupported(std::slice::from_ref(&block)).expect("shape"),
            None
        );
        assert!(is_block(std::slice::from_ref(&block)).expect("all block"));
        assert!(matches!(
            is_block(&[block, cap(mount(), Mode::SingleNodeWriter)]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(
            unsupported(&[cap(mount(), Mode::MultiNodeMultiWriter)])
                .expect("shape")
                .is_some()
        );
        let flags = cap(
            Some(AccessType::Mount(MountVolume {
                mount_flags: vec!["bogus".into()],
                ..Default::default()
            })),
            Mode::SingleNodeWriter,
        );
        let reason = unsupported(&[flags]).expect("shape").expect("unsupported");
        assert!(reason.contains("bogus"), "{reason}");
    }
}
