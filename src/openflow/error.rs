//! The OpenFlow 1.3 errors (`ofp_error_msg` type and code) that flowmark
//! sends, one enum variant per error type, the code as a typed enum.

/// `OFPET_*` error types.
pub mod error_type {
    pub const HELLO_FAILED: u16 = 0;
    pub const BAD_REQUEST: u16 = 1;
    pub const BAD_ACTION: u16 = 2;
    pub const BAD_INSTRUCTION: u16 = 3;
    pub const BAD_MATCH: u16 = 4;
    pub const FLOW_MOD_FAILED: u16 = 5;
    pub const GROUP_MOD_FAILED: u16 = 6;
    pub const PORT_MOD_FAILED: u16 = 7;
    pub const QUEUE_OP_FAILED: u16 = 9;
    pub const SWITCH_CONFIG_FAILED: u16 = 10;
    pub const ROLE_REQUEST_FAILED: u16 = 11;
    pub const METER_MOD_FAILED: u16 = 12;
    pub const TABLE_FEATURES_FAILED: u16 = 13;
    pub const EXPERIMENTER: u16 = 0xffff;
}

macro_rules! codes {
    ($(#[$m:meta])* $name:ident { $($v:ident = $n:expr),* $(,)? }) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name { $($v = $n),* }
        impl $name {
            pub const fn code(self) -> u16 { self as u16 }
        }
    };
}

codes!(
    /// `OFPHFC_*`.
    HelloFailedCode { Incompatible = 0, Eperm = 1 }
);
codes!(
    /// `OFPBRC_*`.
    BadRequestCode {
        BadVersion = 0, BadType = 1, BadMultipart = 2, BadExperimenter = 3,
        BadExpType = 4, Eperm = 5, BadLen = 6, BufferEmpty = 7, BufferUnknown = 8,
        BadTableId = 9, IsSlave = 10, BadPort = 11, BadPacket = 12,
        MultipartBufferOverflow = 13,
    }
);
codes!(
    /// `OFPBAC_*`.
    BadActionCode {
        BadType = 0, BadLen = 1, BadExperimenter = 2, BadExpType = 3, BadOutPort = 4,
        BadArgument = 5, Eperm = 6, TooMany = 7, BadQueue = 8, BadOutGroup = 9,
        MatchInconsistent = 10, UnsupportedOrder = 11, BadTag = 12, BadSetType = 13,
        BadSetLen = 14, BadSetArgument = 15,
    }
);
codes!(
    /// `OFPBIC_*`.
    BadInstructionCode {
        UnknownInst = 0, UnsupInst = 1, BadTableId = 2, UnsupMetadata = 3,
        UnsupMetadataMask = 4, BadExperimenter = 5, BadExpType = 6, BadLen = 7, Eperm = 8,
    }
);
codes!(
    /// `OFPBMC_*`.
    BadMatchCode {
        BadType = 0, BadLen = 1, BadTag = 2, BadDlAddrMask = 3, BadNwAddrMask = 4,
        BadWildcards = 5, BadField = 6, BadValue = 7, BadMask = 8, BadPrereq = 9,
        DupField = 10, Eperm = 11,
    }
);
codes!(
    /// `OFPFMFC_*`.
    FlowModFailedCode {
        Unknown = 0, TableFull = 1, BadTableId = 2, Overlap = 3, Eperm = 4,
        BadTimeout = 5, BadCommand = 6, BadFlags = 7,
    }
);

codes!(
    /// `OFPGMFC_*`.
    GroupModFailedCode {
        GroupExists = 0, InvalidGroup = 1, WeightUnsupported = 2, OutOfGroups = 3,
        OutOfBuckets = 4, ChainingUnsupported = 5, WatchUnsupported = 6, Loop = 7,
        UnknownGroup = 8, ChainedGroup = 9, BadType = 10, BadCommand = 11, BadBucket = 12,
        BadWatch = 13, Eperm = 14,
    }
);
codes!(
    /// `OFPMMFC_*`.
    MeterModFailedCode {
        Unknown = 0, MeterExists = 1, InvalidMeter = 2, UnknownMeter = 3, BadCommand = 4,
        BadFlags = 5, BadRate = 6, BadBurst = 7, BadBand = 8, BadBandValue = 9,
        OutOfMeters = 10, OutOfBands = 11,
    }
);
codes!(
    /// `OFPPMFC_*`.
    PortModFailedCode { BadPort = 0, BadHwAddr = 1, BadConfig = 2, BadAdvertise = 3, Eperm = 4 }
);
codes!(
    /// `OFPQOFC_*`.
    QueueOpFailedCode { BadPort = 0, BadQueue = 1, Eperm = 2 }
);

codes!(
    /// `OFPRRFC_*`.
    RoleRequestFailedCode { Stale = 0, Unsup = 1, BadRole = 2 }
);

codes!(
    /// `OFPBFC_*` of the ONF bundle extension (sent as ONF experimenter
    /// errors, code 2300 + n, under OpenFlow 1.3).
    BundleFailedCode {
        Unknown = 0, Eperm = 1, BadId = 2, BundleExist = 3, BundleClosed = 4,
        OutOfBundles = 5, BadType = 6, BadFlags = 7, MsgBadLen = 8, MsgBadXid = 9,
        MsgUnsup = 10, MsgConflict = 11, MsgTooMany = 12, MsgFailed = 13,
    }
);

/// An error flowmark reports to the peer: what the spec names it, and a
/// sentence for the log saying why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfpError {
    #[error("hello failed ({code:?}): {detail}")]
    HelloFailed {
        code: HelloFailedCode,
        detail: String,
    },
    #[error("bad request ({code:?}): {detail}")]
    BadRequest {
        code: BadRequestCode,
        detail: String,
    },
    #[error("bad action ({code:?}): {detail}")]
    BadAction { code: BadActionCode, detail: String },
    #[error("role request failed ({code:?}): {detail}")]
    RoleRequestFailed {
        code: RoleRequestFailedCode,
        detail: String,
    },
    #[error("bad instruction ({code:?}): {detail}")]
    BadInstruction {
        code: BadInstructionCode,
        detail: String,
    },
    #[error("bad match ({code:?}): {detail}")]
    BadMatch { code: BadMatchCode, detail: String },
    #[error("flow mod failed ({code:?}): {detail}")]
    FlowModFailed {
        code: FlowModFailedCode,
        detail: String,
    },
    #[error("group mod failed ({code:?}): {detail}")]
    GroupModFailed {
        code: GroupModFailedCode,
        detail: String,
    },
    #[error("meter mod failed ({code:?}): {detail}")]
    MeterModFailed {
        code: MeterModFailedCode,
        detail: String,
    },
    #[error("port mod failed ({code:?}): {detail}")]
    PortModFailed {
        code: PortModFailedCode,
        detail: String,
    },
    #[error("queue operation failed ({code:?}): {detail}")]
    QueueOpFailed {
        code: QueueOpFailedCode,
        detail: String,
    },
    /// Table features cannot be changed: `OFPTFFC_EPERM`.
    #[error("table features cannot be set")]
    TableFeaturesEperm,
    #[error("bundle failed ({code:?}): {detail}")]
    BundleFailed {
        code: BundleFailedCode,
        detail: String,
    },
}

impl OfpError {
    /// The `(type, code)` pair of the `ofp_error_msg`.
    pub fn type_code(&self) -> (u16, u16) {
        use error_type as t;
        match self {
            OfpError::HelloFailed { code, .. } => (t::HELLO_FAILED, code.code()),
            OfpError::BadRequest { code, .. } => (t::BAD_REQUEST, code.code()),
            OfpError::BadAction { code, .. } => (t::BAD_ACTION, code.code()),
            OfpError::RoleRequestFailed { code, .. } => (t::ROLE_REQUEST_FAILED, code.code()),
            OfpError::BadInstruction { code, .. } => (t::BAD_INSTRUCTION, code.code()),
            OfpError::BadMatch { code, .. } => (t::BAD_MATCH, code.code()),
            OfpError::FlowModFailed { code, .. } => (t::FLOW_MOD_FAILED, code.code()),
            OfpError::GroupModFailed { code, .. } => (t::GROUP_MOD_FAILED, code.code()),
            OfpError::MeterModFailed { code, .. } => (t::METER_MOD_FAILED, code.code()),
            OfpError::PortModFailed { code, .. } => (t::PORT_MOD_FAILED, code.code()),
            OfpError::QueueOpFailed { code, .. } => (t::QUEUE_OP_FAILED, code.code()),
            OfpError::TableFeaturesEperm => (t::TABLE_FEATURES_FAILED, 5),
            OfpError::BundleFailed { code, .. } => (t::EXPERIMENTER, 2300 + code.code()),
        }
    }

    /// The experimenter id an `OFPET_EXPERIMENTER` error carries before its
    /// data (the ONF id for bundle errors).
    pub fn experimenter(&self) -> Option<u32> {
        matches!(self, OfpError::BundleFailed { .. }).then_some(super::message::ONF_EXPERIMENTER)
    }

    pub fn bundle_failed(code: BundleFailedCode, detail: impl Into<String>) -> Self {
        OfpError::BundleFailed {
            code,
            detail: detail.into(),
        }
    }

    pub fn bad_request(code: BadRequestCode, detail: impl Into<String>) -> Self {
        OfpError::BadRequest {
            code,
            detail: detail.into(),
        }
    }
    pub fn bad_action(code: BadActionCode, detail: impl Into<String>) -> Self {
        OfpError::BadAction {
            code,
            detail: detail.into(),
        }
    }
    pub fn bad_instruction(code: BadInstructionCode, detail: impl Into<String>) -> Self {
        OfpError::BadInstruction {
            code,
            detail: detail.into(),
        }
    }
    pub fn bad_match(code: BadMatchCode, detail: impl Into<String>) -> Self {
        OfpError::BadMatch {
            code,
            detail: detail.into(),
        }
    }
    pub fn flow_mod_failed(code: FlowModFailedCode, detail: impl Into<String>) -> Self {
        OfpError::FlowModFailed {
            code,
            detail: detail.into(),
        }
    }
    pub fn group_mod_failed(code: GroupModFailedCode, detail: impl Into<String>) -> Self {
        OfpError::GroupModFailed {
            code,
            detail: detail.into(),
        }
    }
    pub fn role_request_failed(code: RoleRequestFailedCode, detail: impl Into<String>) -> Self {
        OfpError::RoleRequestFailed {
            code,
            detail: detail.into(),
        }
    }
    pub fn meter_mod_failed(code: MeterModFailedCode, detail: impl Into<String>) -> Self {
        OfpError::MeterModFailed {
            code,
            detail: detail.into(),
        }
    }
    pub fn port_mod_failed(code: PortModFailedCode, detail: impl Into<String>) -> Self {
        OfpError::PortModFailed {
            code,
            detail: detail.into(),
        }
    }
    pub fn queue_op_failed(code: QueueOpFailedCode, detail: impl Into<String>) -> Self {
        OfpError::QueueOpFailed {
            code,
            detail: detail.into(),
        }
    }
}

/// Why a byte string is not a message flowmark accepts. `xid` is known once
/// the header was readable, so that the ERROR can answer the request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("{0} bytes is shorter than the 8-byte OpenFlow header")]
    ShortHeader(usize),
    #[error("the header's length {0} is below the 8-byte minimum")]
    BadHeaderLength(u16),
    #[error("the header says {declared} bytes but only {available} are there")]
    Incomplete { declared: usize, available: usize },
    #[error("xid {xid:#x}: {error}")]
    Refused { xid: u32, error: OfpError },
}

impl DecodeError {
    /// The OpenFlow error to send back, if the peer should get one.
    pub fn ofp_error(&self) -> OfpError {
        match self {
            DecodeError::Refused { error, .. } => error.clone(),
            other => OfpError::bad_request(BadRequestCode::BadLen, other.to_string()),
        }
    }
}
