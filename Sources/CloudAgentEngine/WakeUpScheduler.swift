import CloudAgentCore
import Foundation
import Logging
import ServiceLifecycle

/// Fires each session's durable next wake-up. The store holds one wake-up per session; this
/// service arms the ones due within a window (`window`), refilled from the store every
/// `refillInterval` (never all of them: a million dormant sessions cost nothing here), keeps
/// them in an in-memory heap and sleeps until the earliest. On a store shared by several nodes
/// the refill claims the rows it arms (a dead node's claims pass to the others once their lease
/// runs out). A due session is evaluated (idempotently) by `evaluate`, which persists and
/// returns the session's next wake-up; arming an earlier time wakes the loop at once.
///
/// Every wait is on the injected clock: on a `ManualClock` the scheduler's timing is a test's to
/// move, in milliseconds.
///
/// A wake-up fires as a *timer* (the evaluation goes ahead only while the stored wake-up is
/// due, so that one armed on several nodes fires once); a `poke` (after a change) evaluates
/// the session anyway.
public actor WakeUpScheduler: Service {
    /// Evaluates a session; `timer` is true for a stored wake-up firing, false for a poke.
    public typealias Evaluate = @Sendable (SessionID, _ timer: Bool) async -> Date?

    /// How far ahead wake-ups are armed, and how often the window is refilled from the store.
    public struct Window: Sendable {
        public var aheadMs: Int64
        public var refillMs: Int64
        /// How long a refill's claim lasts (several nodes).
        public var leaseMs: Int64
        public var node: String

        public init(aheadMs: Int64 = 10_000, refillMs: Int64 = 1_000, leaseMs: Int64 = 5_000, node: String = "local") {
            self.aheadMs = aheadMs
            self.refillMs = refillMs
            self.leaseMs = leaseMs
            self.node = node
        }
    }

    private let store: any SessionStore
    private let clock: any WallClock
    private let logger: Logger
    private let window: Window
    private var evaluate: Evaluate?
    private var heap = WakeUpHeap()
    private var armed: [SessionID: Date] = [:]
    /// Sessions armed by a poke (evaluated whether their stored wake-up is due or not).
    private var poked: Set<SessionID> = []
    private var sleeper: Task<Void, Never>?
    private var sleepingUntil: Date?

    public init(store: any SessionStore, clock: any WallClock, logger: Logger, window: Window = Window()) {
        self.store = store
        self.clock = clock
        self.logger = logger
        self.window = window
    }

    /// Sets the evaluation (set once, before `run`).
    public func setEvaluator(_ evaluate: @escaping Evaluate) { self.evaluate = evaluate }

    /// Sets an evaluation that treats timers and pokes alike.
    public func setEvaluator(_ evaluate: @escaping @Sendable (SessionID) async -> Date?) {
        self.evaluate = { id, _ in await evaluate(id) }
    }

    /// Arms (or disarms, with nil) a session's wake-up in memory. The durable copy is written by
    /// the evaluation that computed it. One due beyond the window is left to a later refill.
    public func arm(_ session: SessionID, at due: Date?) {
        guard let due, due.milliseconds(since: clock.now()) <= window.aheadMs else {
            armed[session] = nil
            poked.remove(session)
            return
        }
        if armed[session] == due { return }
        armed[session] = due
        heap.push(WakeUp(sessionId: session, dueAt: due))
        // Re-arming leaves stale entries behind; rebuild when they outnumber the live ones.
        if heap.count > 2 * armed.count + 1024 {
            heap = WakeUpHeap()
            for (id, at) in armed { heap.push(WakeUp(sessionId: id, dueAt: at)) }
        }
        if let sleepingUntil, due < sleepingUntil { sleeper?.cancel() }
    }

    /// Evaluates a session as soon as possible (after any change to it).
    public func poke(_ session: SessionID) {
        poked.insert(session)
        arm(session, at: clock.now())
    }

    /// How many sessions have a wake-up armed.
    public var armedCount: Int { armed.count }

    public func run() async throws {
        // Graceful shutdown cancels the loops; returning (not throwing) ends the service cleanly.
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.refillLoop() }
                group.addTask { await self.loop() }
            }
        }
    }

    /// Arms the wake-ups due within the window, every `refillMs` (claiming them on a shared store).
    private func refillLoop() async {
        var first = true
        while !Task.isCancelled {
            do {
                let count = try await refill()
                if first { logger.info("wake-ups armed from the store", metadata: ["count": "\(count)", "windowMs": "\(window.aheadMs)"]) }
                first = false
            } catch {
                logger.warning("loading wake-ups failed; retrying", metadata: ["error": "\(String(reflecting: error))"])
            }
            try? await clock.sleep(milliseconds: window.refillMs)
        }
    }

    /// One refill: the window's wake-ups (at most 10,000 at a time, earliest first). Returns how many came back.
    @discardableResult
    public func refill() async throws -> Int {
        let now = clock.now()
        let horizon = now.adding(milliseconds: window.aheadMs)
        let wakeUps = try await store.claimWakeUps(dueBefore: horizon, now: now, node: window.node, leaseMs: window.leaseMs, limit: 10_000)
        for wakeUp in wakeUps where !evaluating.contains(wakeUp.sessionId) && armed[wakeUp.sessionId].map({ wakeUp.dueAt < $0 }) ?? true {
            arm(wakeUp.sessionId, at: wakeUp.dueAt)
        }
        return wakeUps.count
    }

    /// Sessions are independent: each due session is evaluated in a task of its own, and the
    /// loop goes on at once, so one slow evaluation (a session whose lock is held, a slow store
    /// write) never delays another's wake-up. At most `concurrencyLimit` run at a time; the rest
    /// wait in order of their due time. An evaluation runs uncancelled, so a graceful shutdown
    /// lets the ones in flight finish their transition and starts no new one; the durable
    /// wake-ups are re-armed by the next start.
    private func loop() async {
        await withDiscardingTaskGroup { group in
            while !Task.isCancelled {
                waiting.append(contentsOf: popDue(now: clock.now()))
                while evaluating.count < Self.concurrencyLimit, !waiting.isEmpty {
                    let id = waiting.removeFirst()
                    // Due again while being evaluated: evaluated once more when that one ends.
                    guard evaluating.insert(id).inserted else {
                        dueAgain.insert(id)
                        continue
                    }
                    let timer = poked.remove(id) == nil
                    group.addTask { [self] in
                        let next = await Task { await self.evaluateNow(id, timer: timer) }.value
                        await self.finished(id, next: next)
                    }
                }
                // With sessions waiting for a slot, the next `finished` wakes the loop.
                await sleep(until: waiting.isEmpty ? heap.peek?.dueAt : nil)
            }
        }
    }

    /// How many evaluations run at once.
    package static let concurrencyLimit = 64
    private var evaluating: Set<SessionID> = []
    private var waiting: [SessionID] = []
    private var dueAgain: Set<SessionID> = []

    private func evaluateNow(_ id: SessionID, timer: Bool) async -> Date? {
        guard let evaluate else { return nil }
        return await evaluate(id, timer)
    }

    /// An evaluation ended: arm the next wake-up it computed (unless an earlier one was armed
    /// meanwhile), or evaluate again at once when the session came due during it.
    private func finished(_ id: SessionID, next: Date?) {
        evaluating.remove(id)
        if dueAgain.remove(id) != nil {
            poke(id)
        } else if let next, armed[id].map({ next < $0 }) ?? true {
            arm(id, at: next)
        }
        sleeper?.cancel()
    }

    /// Sessions being evaluated now (for tests and metrics).
    public var evaluatingCount: Int { evaluating.count }

    private func popDue(now: Date) -> [SessionID] {
        var due: [SessionID] = []
        while let top = heap.peek, top.dueAt <= now {
            heap.pop()
            // A heap entry that no longer matches the armed time is stale (re-armed or disarmed).
            guard armed[top.sessionId] == top.dueAt else { continue }
            armed[top.sessionId] = nil
            due.append(top.sessionId)
        }
        return due
    }

    private func sleep(until due: Date?) async {
        let until = due ?? clock.now().adding(milliseconds: 60_000)
        let task = Task<Void, Never> { [clock] in try? await clock.sleep(until: until) }
        sleeper = task
        sleepingUntil = until
        await withTaskCancellationHandler {
            await task.value
        } onCancel: {
            task.cancel()
        }
        sleeper = nil
        sleepingUntil = nil
    }
}

/// A binary min-heap of wake-ups by due time.
package struct WakeUpHeap {
    private var items: [WakeUp] = []

    package var peek: WakeUp? { items.first }
    package var count: Int { items.count }

    package mutating func push(_ item: WakeUp) {
        items.append(item)
        var child = items.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            guard items[child].dueAt < items[parent].dueAt else { break }
            items.swapAt(child, parent)
            child = parent
        }
    }

    @discardableResult
    package mutating func pop() -> WakeUp? {
        guard !items.isEmpty else { return nil }
        items.swapAt(0, items.count - 1)
        let top = items.removeLast()
        var parent = 0
        while true {
            let left = 2 * parent + 1, right = left + 1
            var smallest = parent
            if left < items.count, items[left].dueAt < items[smallest].dueAt { smallest = left }
            if right < items.count, items[right].dueAt < items[smallest].dueAt { smallest = right }
            guard smallest != parent else { break }
            items.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}
