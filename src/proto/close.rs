//! The WebSocket close codes the gateway sends (RFC 6455 §7.4), each with the reason it is used
//! for, plus the codes it only echoes (a client's own close is answered with the same code).
//! The metrics layer counts them by this enum, so its label set stays small and fixed: every
//! application code (3000-4999) a client closes with is counted under one `3000-4999` label.

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
    /// Unsupported data: only echoed.
    Unsupported1003,
    /// The client expected an extension: only echoed.
    Extension1010,
    /// The connection's token expired (`TOKEN_EXPIRY_CLOSE`); private-use code.
    TokenExpired4001,
    /// The connection may have missed notifications it can recover (history): the client should
    /// reconnect at once with `since` and `epoch`; private-use code.
    Recover4002,
    /// An application code (3000-4999) a client closed with, echoed. Counted as one label;
    /// [`Self::code`] is the range's first code, never sent as such.
    Application,
}

impl CloseCode {
    /// Number of codes.
    pub const N: usize = 13;
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
        Self::Unsupported1003,
        Self::Extension1010,
        Self::TokenExpired4001,
        Self::Recover4002,
        Self::Application,
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
            Self::Unsupported1003 => 1003,
            Self::Extension1010 => 1010,
            Self::TokenExpired4001 => 4001,
            Self::Recover4002 => 4002,
            Self::Application => 3000,
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
            Self::Unsupported1003 => "1003",
            Self::Extension1010 => "1010",
            Self::TokenExpired4001 => "4001",
            Self::Recover4002 => "4002",
            Self::Application => "3000-4999",
        }
    }

    /// The variant for a numeric code the gateway sends on its own behalf (not the
    /// application range).
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|c| *c != Self::Application && c.code() == code)
    }

    /// The label under which an echo of a client's close `code` is counted: its own variant, or
    /// [`Self::Application`] for 3000-4999. `None` for codes a client may not send.
    pub fn for_echo(code: u16) -> Option<Self> {
        match code {
            1000..=1003 | 1007..=1011 => Self::from_code(code),
            3000..=4999 => Some(Self::Application),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_labels_match() {
        for (i, c) in CloseCode::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i);
            if c == CloseCode::Application {
                continue;
            }
            assert_eq!(CloseCode::from_code(c.code()), Some(c));
            assert_eq!(c.as_str(), c.code().to_string());
        }
        assert_eq!(CloseCode::from_code(1005), None);
        assert_eq!(CloseCode::from_code(3000), None);
    }

    #[test]
    fn every_code_a_client_may_send_has_an_echo_label() {
        // 1002 is never echoed in practice (the gateway sends 1002 itself), but has a label.
        for code in (1000..=1003).chain(1007..=1011).chain(3000..=4999) {
            let label = CloseCode::for_echo(code).expect("a label");
            assert!(code >= 3000 || label.code() == code);
        }
        assert_eq!(CloseCode::for_echo(4001), Some(CloseCode::Application));
        for code in [0, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000] {
            assert_eq!(CloseCode::for_echo(code), None, "{code}");
        }
    }
}
