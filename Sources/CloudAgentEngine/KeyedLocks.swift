import CloudAgentCore

/// One async mutex per key, made on demand.
public actor KeyedLocks<Key: Hashable & Sendable> {
    private var waiters: [Key: [CheckedContinuation<Void, Never>]] = [:]
    private var held: Set<Key> = []

    public init() {}

    public func withLock<T: Sendable>(_ id: Key, _ body: @Sendable () async throws -> T) async rethrows -> T {
        await acquire(id)
        defer { release(id) }
        return try await body()
    }

    private func acquire(_ id: Key) async {
        guard held.contains(id) else {
            held.insert(id)
            return
        }
        await withCheckedContinuation { waiters[id, default: []].append($0) }
    }

    private func release(_ id: Key) {
        if var queue = waiters[id], !queue.isEmpty {
            let next = queue.removeFirst()
            waiters[id] = queue.isEmpty ? nil : queue
            next.resume()  // ownership passes straight to the next waiter
        } else {
            held.remove(id)
        }
    }
}
