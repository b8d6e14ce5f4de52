import Foundation

/// Bounds on what a runaway agent can make the store keep: agent output events per execution,
/// and agent output bytes per session. Past either, further `agent` and `output` events are
/// dropped and counted (one `events.truncated` per execution says how many, and why); the
/// lifecycle events are never dropped, and the agent is not stopped for it.
public struct EventCaps: Sendable, Equatable {
    public var maxEventsPerExecution: Int
    public var maxEventBytesPerSession: Int64

    public init(maxEventsPerExecution: Int = 100_000, maxEventBytesPerSession: Int64 = 256 << 20) {
        self.maxEventsPerExecution = maxEventsPerExecution
        self.maxEventBytesPerSession = maxEventBytesPerSession
    }

    public static let `default` = EventCaps()
}

/// Which cap dropped an execution's output.
public enum TruncationReason: String, Sendable, Codable, Equatable {
    /// `CLOUD_AGENT_MAX_EVENTS_PER_EXECUTION`.
    case events
    /// `CLOUD_AGENT_MAX_EVENT_BYTES_PER_SESSION`.
    case bytes
}

/// The active execution's dropped output, until its `events.truncated` is written.
public struct Truncation: Sendable, Codable, Equatable {
    public var executionId: ExecutionID
    public var dropped: Int64
    /// The cap that dropped the first event.
    public var reason: TruncationReason

    public init(executionId: ExecutionID, dropped: Int64, reason: TruncationReason) {
        self.executionId = executionId
        self.dropped = dropped
        self.reason = reason
    }
}

/// A size written `500`, `64KB`, `256MiB`, `1GiB` (KB/MB/GB are powers of 1,000; KiB/MiB/GiB of 1,024).
public enum ByteSizeText {
    public struct Invalid: Error, CustomStringConvertible {
        public let text: String
        public var description: String { "\"\(text)\" is not a size (e.g. 500000, 64KiB, 256MiB, 1GiB)" }
    }

    public static func bytes(_ text: String) throws(Invalid) -> Int64 {
        let trimmed = text.trimmingCharacters(in: .whitespaces)
        let digits = trimmed.prefix { $0.isNumber }
        let unit = trimmed.dropFirst(digits.count).trimmingCharacters(in: .whitespaces).lowercased()
        let multipliers: [String: Int64] = [
            "": 1, "b": 1, "kb": 1_000, "mb": 1_000_000, "gb": 1_000_000_000, "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
        ]
        guard !digits.isEmpty, let value = Int64(digits), let multiplier = multipliers[unit] else { throw Invalid(text: text) }
        let (product, overflow) = value.multipliedReportingOverflow(by: multiplier)
        guard !overflow else { throw Invalid(text: text) }
        return product
    }
}

extension SessionRecord {
    /// One more of execution `id`'s output events dropped past a cap.
    mutating func recordDropped(_ id: ExecutionID, reason: TruncationReason) {
        eventsDropped = (eventsDropped ?? 0) + 1
        if var current = truncation, current.executionId == id {
            current.dropped += 1
            truncation = current
        } else {
            truncation = Truncation(executionId: id, dropped: 1, reason: reason)
        }
    }

    /// Execution `id`'s `events.truncated`, when it ends having dropped output (nil otherwise).
    mutating func truncationEvent(of id: ExecutionID, at date: Date) -> NewEvent? {
        guard let current = truncation, current.executionId == id else { return nil }
        truncation = nil
        return NewEvent(
            executionId: id, type: EventType.eventsTruncated, at: date,
            data: ["dropped": .number(Double(current.dropped)), "reason": .string(current.reason.rawValue)])
    }
}

extension Execution {
    /// Output that was dropped is still a sign of progress (the agent is not stuck).
    mutating func recordDroppedOutput(at date: Date) {
        lastEventAt = max(lastEventAt ?? date, date)
    }
}
