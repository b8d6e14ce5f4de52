import CloudAgentCore
import Foundation
import Synchronization

/// Live events fan-out: every committed event is offered to the session's subscribers. Each
/// subscriber has a bounded buffer; one that falls behind is cut off (told to resume from the
/// last id it saw) so that a slow reader never slows ingest or other readers.
public final class EventHub: Sendable {
    public final class Subscription: Sendable {
        public let events: AsyncStream<Event>
        let continuation: AsyncStream<Event>.Continuation
        private let overflowed = Mutex(false)
        let id = UUID()

        init(bufferSize: Int) {
            (events, continuation) = AsyncStream.makeStream(bufferingPolicy: .bufferingOldest(bufferSize))
        }

        /// True when the subscriber fell behind and its stream was ended for it.
        public var didOverflow: Bool { overflowed.withLock { $0 } }

        func offer(_ event: Event) {
            if case .dropped = continuation.yield(event) {
                overflowed.withLock { $0 = true }
                continuation.finish()
            }
        }
    }

    private let subscribers = Mutex<[SessionID: [UUID: Subscription]]>([:])

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
            if all[session]?.isEmpty == true { all[session] = nil }
        }
    }

    public func publish(_ events: [Event]) {
        guard let session = events.first?.sessionId else { return }
        let targets = subscribers.withLock { Array(($0[session] ?? [:]).values) }
        for subscription in targets {
            for event in events { subscription.offer(event) }
        }
    }

    /// Ends every subscription of a session (it was deleted).
    public func close(_ session: SessionID) {
        let targets = subscribers.withLock { $0.removeValue(forKey: session).map { Array($0.values) } ?? [] }
        for subscription in targets { subscription.continuation.finish() }
    }

    public func subscriberCount(_ session: SessionID) -> Int { subscribers.withLock { $0[session]?.count ?? 0 } }
}
