//! The values an operation object carries on the wire: the kind of each `Message` signal and the
//! `Status` property, as the original daemon spells them.

/// The kind of an operation's `Message(i message_type, s message, i indent_level)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Info,
    Success,
    Warning,
    Error,
    /// Detail a client may show less prominently.
    Dim,
    /// A suggestion of what to do next.
    Hint,
}

impl MessageKind {
    /// The number the signal carries.
    pub fn to_wire(self) -> i32 {
        match self {
            MessageKind::Info => 0,
            MessageKind::Success => 1,
            MessageKind::Warning => 2,
            MessageKind::Error => 3,
            MessageKind::Dim => 4,
            MessageKind::Hint => 5,
        }
    }

    /// The kind a signal's number stands for; `None` for a number no daemon sends.
    pub fn from_wire(number: i32) -> Option<MessageKind> {
        Some(match number {
            0 => MessageKind::Info,
            1 => MessageKind::Success,
            2 => MessageKind::Warning,
            3 => MessageKind::Error,
            4 => MessageKind::Dim,
            5 => MessageKind::Hint,
            _ => return None,
        })
    }
}

/// An operation's `Status`: `running` until it ends, then one of the other three for good.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationStatus {
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl OperationStatus {
    /// The property's value.
    pub fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Running => "running",
            OperationStatus::Completed => "completed",
            OperationStatus::Failed => "failed",
            OperationStatus::Cancelled => "cancelled",
        }
    }

    /// The status a property value names; `None` for any other string.
    pub fn parse(value: &str) -> Option<OperationStatus> {
        [
            OperationStatus::Running,
            OperationStatus::Completed,
            OperationStatus::Failed,
            OperationStatus::Cancelled,
        ]
        .into_iter()
        .find(|s| s.as_str() == value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_values_are_the_originals() {
        let kinds = [
            MessageKind::Info,
            MessageKind::Success,
            MessageKind::Warning,
            MessageKind::Error,
            MessageKind::Dim,
            MessageKind::Hint,
        ];
        for (number, kind) in kinds.into_iter().enumerate() {
            let number = i32::try_from(number).unwrap();
            assert_eq!(kind.to_wire(), number);
            assert_eq!(MessageKind::from_wire(number), Some(kind));
        }
        assert_eq!(MessageKind::from_wire(6), None);
        assert_eq!(MessageKind::from_wire(-1), None);
        for status in ["running", "completed", "failed", "cancelled"] {
            assert_eq!(
                OperationStatus::parse(status).map(OperationStatus::as_str),
                Some(status)
            );
        }
        assert_eq!(OperationStatus::parse("Completed"), None);
    }
}
