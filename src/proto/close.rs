//! The WebSocket close codes the gateway sends (RFC 6455 §7.4), each with the reason it is used
//! for. The metrics layer counts them by this enum.

/// A close code the gateway sends on its own behalf.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// Normal closure.
    Normal1000,
    /// Server going away (shutdown drain, idle timeout).
    GoingAway1001,
    /// Protocol error.
    Protocol1002,
    /// Invalid payload data (for example bad UTF-8 in a text frame).
    InvalidData1007,
    /// Policy violation (for example too many connections for one user).
    Policy1008,
    /// Message too big (over MAX_MESSAGE_BYTES).
    TooBig1009,
    /// Internal server error.
    Internal1011,
    /// Try again later (slow consumer, overload).
    TryAgain1013,
}

impl CloseCode {
    /// Number of codes.
    pub const N: usize = 8;
    /// Every code, in declaration order (index = `code as usize`).
    pub const ALL: [Self; Self::N] = [
        Self::Normal1000,
        Self::GoingAway1001,
        Self::Protocol1002,
        Self::InvalidData1007,
        Self::Policy1008,
        Self::TooBig1009,
        Self::Internal1011,
        Self::TryAgain1013,
    ];

    /// The numeric close code.
    pub const fn code(self) -> u16 {
        match self {
            Self::Normal1000 => 1000,
            Self::GoingAway1001 => 1001,
            Self::Protocol1002 => 1002,
            Self::InvalidData1007 => 1007,
            Self::Policy1008 => 1008,
            Self::TooBig1009 => 1009,
            Self::Internal1011 => 1011,
            Self::TryAgain1013 => 1013,
        }
    }

    /// The code as a decimal string (the metric label).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Normal1000 => "1000",
            Self::GoingAway1001 => "1001",
            Self::Protocol1002 => "1002",
            Self::InvalidData1007 => "1007",
            Self::Policy1008 => "1008",
            Self::TooBig1009 => "1009",
            Self::Internal1011 => "1011",
            Self::TryAgain1013 => "1013",
        }
    }

    /// The variant for a numeric code, if the gateway sends it.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_labels_match() {
        for (i, c) in CloseCode::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i);
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert_eq!(c.as_str(), c.code().to_string());
        }
        assert_eq!(CloseCode::from_code(1005), None);
    }
}
