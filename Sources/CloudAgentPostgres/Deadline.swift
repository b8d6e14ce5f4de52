import Synchronization

/// Runs `body` and gives up after `limit` whether or not `body` honours cancellation: an
/// operation stuck on a database that went away (a connection that never answers, a lease
/// request that never ends) is cancelled and left behind, never awaited. A task group would
/// wait for it at its end, and the bound would not bound. The caller's cancellation is passed on
/// to `body`; the bound still holds if `body` ignores it.
public func withDeadline<Value: Sendable>(
    _ limit: Duration, onTimeout: @escaping @Sendable () -> any Error, _ body: @escaping @Sendable () async throws -> Value
) async throws -> Value {
    let outcome = FirstOutcome<Value>()
    let work = Task {
        do { outcome.finish(.success(try await body())) } catch { outcome.finish(.failure(error)) }
    }
    let timer = Task {
        do { try await Task.sleep(for: limit) } catch { return }
        outcome.finish(.failure(onTimeout()))
    }
    let result = await withTaskCancellationHandler {
        await outcome.wait()
    } onCancel: {
        work.cancel()
    }
    timer.cancel()
    work.cancel()
    return try result.get()
}

/// The first of several outcomes, handed to one waiter (who may come before or after it).
final class FirstOutcome<Value: Sendable>: Sendable {
    private let state = Mutex<(waiter: CheckedContinuation<Result<Value, any Error>, Never>?, outcome: Result<Value, any Error>?)>((nil, nil))

    func finish(_ outcome: Result<Value, any Error>) {
        let waiter = state.withLock { state -> CheckedContinuation<Result<Value, any Error>, Never>? in
            guard state.outcome == nil else { return nil }
            state.outcome = outcome
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.resume(returning: outcome)
    }

    func wait() async -> Result<Value, any Error> {
        await withCheckedContinuation { continuation in
            let ready = state.withLock { state -> Result<Value, any Error>? in
                if let outcome = state.outcome { return outcome }
                state.waiter = continuation
                return nil
            }
            if let ready { continuation.resume(returning: ready) }
        }
    }
}
