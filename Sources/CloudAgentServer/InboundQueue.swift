import CloudAgentProtocol
import Synchronization

/// The frames a runtime sent that are not handled yet: one producer (the socket reader), one
/// consumer (the connection's handler), bounded. The consumer takes everything that has arrived
/// at once; the producer waits while the queue is full.
final class InboundQueue: Sendable {
    private struct State {
        var items: [RuntimeMessage] = []
        var head = 0
        var ended = false
        var failure: (any Error)?
        var closed = false
        var consumer: CheckedContinuation<Void, Never>?
        var producer: CheckedContinuation<Void, Never>?
        var count: Int { items.count - head }
    }

    private let state = Mutex(State())
    private let limit: Int

    init(limit: Int) { self.limit = limit }

    /// Adds a frame, waiting while the queue is full. False once the consumer is gone.
    func push(_ message: RuntimeMessage) async -> Bool {
        while true {
            let (accepted, wake): (Bool?, CheckedContinuation<Void, Never>?) = state.withLock { state in
                if state.closed { return (false, nil) }
                guard state.count < limit else { return (nil, nil) }
                state.items.append(message)
                defer { state.consumer = nil }
                return (true, state.consumer)
            }
            wake?.resume()
            if let accepted { return accepted }
            await withTaskCancellationHandler {
                await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
                    let now = state.withLock { state -> Bool in
                        if state.closed || state.count < limit { return true }
                        state.producer = waiter
                        return false
                    }
                    if now { waiter.resume() }
                }
            } onCancel: {
                self.close()
            }
        }
    }

    /// No more frames: the socket ended, or reading failed with `error` (raised by `next` once
    /// the frames before it are taken).
    func finish(throwing error: (any Error)?) {
        let wake = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.ended = true
            state.failure = error
            defer { state.consumer = nil }
            return state.consumer
        }
        wake?.resume()
    }

    /// The consumer is gone: a waiting producer is let go, further frames are refused.
    func close() {
        let wake = state.withLock { state -> CheckedContinuation<Void, Never>? in
            state.closed = true
            state.items.removeAll()
            state.head = 0
            defer { state.producer = nil }
            return state.producer
        }
        wake?.resume()
    }

    /// Up to `max` frames, waiting for the first; nil after the last one.
    func next(max: Int) async throws -> [RuntimeMessage]? {
        while true {
            enum Step { case batch([RuntimeMessage], CheckedContinuation<Void, Never>?), end((any Error)?), wait }
            let step: Step = state.withLock { state in
                if state.count > 0 {
                    let end = state.head + min(max, state.count)
                    let batch = Array(state.items[state.head..<end])
                    state.head = end
                    if state.head == state.items.count {
                        state.items.removeAll(keepingCapacity: true)
                        state.head = 0
                    } else if state.head > 4096 {
                        state.items.removeFirst(state.head)
                        state.head = 0
                    }
                    defer { state.producer = nil }
                    return .batch(batch, state.producer)
                }
                if state.ended || state.closed { return .end(state.closed ? nil : state.failure) }
                return .wait
            }
            switch step {
            case .batch(let batch, let wake):
                wake?.resume()
                return batch
            case .end(let failure):
                if let failure { throw failure }
                return nil
            case .wait:
                await withCheckedContinuation { (waiter: CheckedContinuation<Void, Never>) in
                    let now = state.withLock { state -> Bool in
                        if state.count > 0 || state.ended || state.closed { return true }
                        state.consumer = waiter
                        return false
                    }
                    if now { waiter.resume() }
                }
            }
        }
    }
}
