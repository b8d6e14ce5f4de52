import CloudAgentProtocol
import Foundation

/// The runtime's numbered events that the control plane has not acknowledged yet.
///
/// `seq` rises by one per runtime process from 1. An acknowledgement is cumulative: `ack(n)`
/// means every event up to `n` is durable, so those leave the outbox. Whatever is left is
/// resent, in order, after each reconnect; the control plane drops a `seq` it already has.
public struct EventOutbox: Sendable {
    /// The last `seq` handed out (0 before the first event).
    public private(set) var lastSeq: Int64 = 0
    /// The highest `seq` the control plane has acknowledged.
    public private(set) var acknowledgedSeq: Int64 = 0
    /// Unacknowledged events, oldest first.
    public private(set) var pending: [RuntimeEvent] = []

    public init() {}

    /// Numbers a new event and keeps it until it is acknowledged.
    public mutating func append(executionId: String, kind: String, at: Date, data: [String: ProtocolValue]) -> RuntimeEvent {
        lastSeq += 1
        let event = RuntimeEvent(seq: lastSeq, executionId: executionId, kind: kind, at: at, data: data)
        pending.append(event)
        return event
    }

    /// Drops every event up to `seq`. An older or repeated acknowledgement changes nothing.
    public mutating func acknowledge(upTo seq: Int64) {
        guard seq > acknowledgedSeq else { return }
        acknowledgedSeq = min(seq, lastSeq)
        if let firstKept = pending.firstIndex(where: { $0.seq > seq }) {
            pending.removeFirst(firstKept)
        } else {
            pending.removeAll()
        }
    }

    public var isEmpty: Bool { pending.isEmpty }
}
