import CloudAgentCore
import Foundation
import Synchronization

/// Live events fan-out: every committed event is offered to the session's subscribers. Each
/// subscriber has a bounded buffer; one that falls behind is cut off (told to resume from the
/// last id it saw) so that a slow reader never slows ingest or other readers.
public final class EventHub: Sendable {
    /// A committed event as the stream sends it: its JSON text is written once, by the first
    /// subscriber that sends it, and shared by the others.
    public final class LiveEvent: Sendable {
        public let event: Event
        private let encoded = Mutex<String?>(nil)

        init(_ event: Event) { self.event = event }

        public var text: String {
            encoded.withLock { cached in
                if let cached { return cached }
                let text = JSONText.encode(event.json)
                cached = text
                return text
            }
        }
    }

    public final class Subscription: Sendable {
        public let events: AsyncStream<LiveEvent>
        package let continuation: AsyncStream<LiveEvent>.Continuation
        private let overflowed = Mutex(false)
        let id = UUID()

        let bufferSize: Int

        init(bufferSize: Int) {
            self.bufferSize = bufferSize
            (events, continuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingOldest(bufferSize))
        }

        /// True when the subscriber fell behind and its stream was ended for it.
        public var didOverflow: Bool { overflowed.withLock { $0 } }

        func offer(_ event: LiveEvent) {
            if case .dropped = continuation.yield(event) {
                overflowed.withLock { $0 = true }
                continuation.finish()
            }
        }
    }

    private let subscribers = Mutex<[SessionID: [UUID: Subscription]]>([:])
    /// The highest event id published per session with subscribers (for a resync).
    private let highest = Mutex<[SessionID: Int64]>([:])

    public init() {}

    /// Subscribes to a session's events from now on.
    public func subscribe(_ session: SessionID, bufferSize: Int = 1024) -> Subscription {
        let subscription = Subscription(bufferSize: bufferSize)
        subscribers.withLock { $0[session, default: [:]][subscription.id] = subscription }
        subscription.continuation.onTermination = { [weak self] _ in self?.remove(session, subscription.id) }
        return subscription
    }

    private func remove(_ session: SessionID, _ id: UUID) {
        subscribers.withLock { all in
            all[session]?[id] = nil
            if all[session]?.isEmpty == true {
                all[session] = nil
                highest.withLock { $0[session] = nil }
            }
        }
    }

    public func publish(_ events: [Event]) {
        guard let session = events.first?.sessionId else { return }
        let targets = subscribers.withLock { Array(($0[session] ?? [:]).values) }
        guard !targets.isEmpty else { return }
        if let last = events.map(\.id).max() { highest.withLock { $0[session] = max($0[session] ?? 0, last) } }
        let live = events.map(LiveEvent.init)
        for subscription in targets {
            for event in live { subscription.offer(event) }
        }
    }

    /// Ends every subscription of a session (it was deleted).
    public func close(_ session: SessionID) {
        let targets = subscribers.withLock { $0.removeValue(forKey: session).map { Array($0.values) } ?? [] }
        for subscription in targets { subscription.continuation.finish() }
    }

    /// The most events one commit of a session should publish at once: a quarter of its
    /// smallest subscriber buffer, so that a burst never cuts off a subscriber that keeps up.
    public func burstLimit(_ session: SessionID) -> Int {
        subscribers.withLock { all in
            guard let smallest = all[session]?.values.map(\.bufferSize).min() else { return Int.max }
            return max(1, smallest / 4)
        }
    }

    /// The sessions that have subscribers here.
    public var subscribedSessions: [SessionID] { subscribers.withLock { Array($0.keys) } }

    /// The highest event id published to a session's subscribers (nil when none yet).
    public func highestPublished(_ session: SessionID) -> Int64? { highest.withLock { $0[session] } }

    public func subscriberCount(_ session: SessionID) -> Int { subscribers.withLock { $0[session]?.count ?? 0 } }
}
