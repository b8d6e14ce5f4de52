import CloudAgentProtocol
import Foundation

/// The runtime's numbered events that the control plane has not acknowledged yet, kept as the
/// frames that carry them, within a bound in bytes.
///
/// `seq` rises by one per runtime process from 1. An acknowledgement is cumulative: `ack(n)`
/// means every event up to `n` is durable, so those leave the outbox. Whatever is left is
/// resent, in order, after each reconnect; the control plane drops a `seq` it already has.
///
/// The bound: once the frames waiting reach `limitBytes` the outbox is `full`, and the runtime
/// stops reading its agent's output until acknowledgements make room (backpressure: the agent is
/// held, blocked writing to its full pipe, and nothing is lost). An event is never refused, so
/// the outbox holds at most `limitBytes` plus one event (and the small `execution.running` and
/// `execution.ended` events, which are not agent output and are never held back).
public struct EventOutbox: Sendable {
    /// 64 MiB: room for hours of a chatty agent's output while no control plane is reachable.
    public static let defaultLimitBytes = 64 << 20

    /// One unacknowledged event: its `seq` and the `event` frame that carries it.
    public struct Entry: Sendable, Equatable {
        public let seq: Int64
        public let frame: String
    }

    /// The bound, in bytes of frames (UTF-8).
    public let limitBytes: Int
    /// The last `seq` handed out (0 before the first event).
    public private(set) var lastSeq: Int64 = 0
    /// The highest `seq` the control plane has acknowledged.
    public private(set) var acknowledgedSeq: Int64 = 0
    /// Unacknowledged events, oldest first.
    public private(set) var pending: [Entry] = []
    /// The bytes of the frames in `pending`.
    public private(set) var pendingBytes = 0

    public init(limitBytes: Int = EventOutbox.defaultLimitBytes) {
        self.limitBytes = max(limitBytes, 1)
    }

    /// Numbers a new event and keeps its frame until it is acknowledged. A frame too large for
    /// the protocol is made again from the event cut to fit (`EventDataBound`): only then is the
    /// event's size looked at, so the usual event costs nothing more.
    @discardableResult
    public mutating func append(executionId: String, kind: String, at: Date, data: [String: JSONValue]) -> Entry {
        lastSeq += 1
        var event = RuntimeEvent(seq: lastSeq, executionId: executionId, kind: kind, at: at, data: data)
        var frame = ProtocolCoding.encode(.event(event))
        if frame.utf8.count > RuntimeProtocol.maxFrameBytes {
            event.data = EventDataBound.bounded(data)
            frame = ProtocolCoding.encode(.event(event))
        }
        let entry = Entry(seq: lastSeq, frame: frame)
        pending.append(entry)
        pendingBytes += entry.frame.utf8.count
        return entry
    }

    /// Drops every event up to `seq`. An older or repeated acknowledgement changes nothing.
    public mutating func acknowledge(upTo seq: Int64) {
        guard seq > acknowledgedSeq else { return }
        acknowledgedSeq = min(seq, lastSeq)
        let kept = pending.firstIndex { $0.seq > seq } ?? pending.endIndex
        for entry in pending[..<kept] { pendingBytes -= entry.frame.utf8.count }
        pending.removeFirst(kept)
    }

    public var isEmpty: Bool { pending.isEmpty }

    /// At the bound: hold the agent's output until acknowledgements make room.
    public var isFull: Bool { pendingBytes >= limitBytes }
}
