import CloudAgentCore
import Foundation
import Logging
import ServiceLifecycle

/// Collects heartbeats and writes them in batches: one single-column UPDATE per running
/// execution, one transaction per flush. Heartbeats never touch the wake-ups (a wake-up that
/// fires at an old stale deadline re-evaluates and finds the fresh heartbeat).
public actor HeartbeatBatcher: Service {
    private let store: any SessionStore
    private let clock: any WallClock
    private let logger: Logger
    private let flushIntervalMs: Int64
    private var pending: [ExecutionID: Date] = [:]
    private var accepted: Int = 0

    public init(store: any SessionStore, clock: any WallClock = SystemWallClock(), logger: Logger, flushIntervalMs: Int64 = 25) {
        self.store = store
        self.clock = clock
        self.logger = logger
        self.flushIntervalMs = flushIntervalMs
    }

    /// Records `count` heartbeats of an execution received at `date` (the latest one wins).
    public func record(_ execution: ExecutionID, at date: Date, count: Int = 1) {
        pending[execution] = max(pending[execution] ?? date, date)
        accepted += count
    }

    /// Heartbeats accepted since start (for metrics and benchmarks).
    public var acceptedCount: Int { accepted }

    /// Writes what is pending now.
    public func flush() async {
        guard !pending.isEmpty else { return }
        let batch = pending.map { Heartbeat(executionId: $0.key, at: $0.value) }
        pending.removeAll(keepingCapacity: true)
        do {
            try await store.recordHeartbeats(batch)
        } catch {
            logger.error("recording heartbeats failed", metadata: ["count": "\(batch.count)", "error": "\(String(reflecting: error))"])
            for beat in batch { pending[beat.executionId] = max(pending[beat.executionId] ?? beat.at, beat.at) }
        }
    }

    /// Flushes every interval until a graceful shutdown, then once more. A flush is never torn
    /// by the shutdown: it runs in a task of its own (the store refuses work from a cancelled
    /// task with `CancellationError`), so the heartbeats of the last interval are written too.
    public func run() async throws {
        await cancelWhenGracefulShutdown {
            while !Task.isCancelled {
                try? await self.clock.sleep(milliseconds: self.flushIntervalMs)
                guard !Task.isCancelled else { break }
                await self.flushUncancelled()
            }
        }
        await flushUncancelled()
    }

    private func flushUncancelled() async {
        await Task { await self.flush() }.value
    }
}
