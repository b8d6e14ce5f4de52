import CloudAgentCore
import Foundation
import Logging
import ServiceLifecycle

/// Fires each session's durable next wake-up. The store holds one wake-up per session; this
/// service re-arms all of them from the store at start-up, keeps them in an in-memory heap and
/// sleeps until the earliest. A due session is evaluated (idempotently) by `evaluate`, which
/// persists and returns the session's next wake-up; arming an earlier time wakes the loop at once.
public actor WakeUpScheduler: Service {
    public typealias Evaluate = @Sendable (SessionID) async -> Date?

    private let store: any SessionStore
    private let clock: any WallClock
    private let logger: Logger
    private var evaluate: Evaluate?
    private var heap = WakeUpHeap()
    private var armed: [SessionID: Date] = [:]
    private var sleeper: Task<Void, Never>?
    private var sleepingUntil: Date?

    public init(store: any SessionStore, clock: any WallClock, logger: Logger) {
        self.store = store
        self.clock = clock
        self.logger = logger
    }

    /// Sets the evaluation (set once, before `run`).
    public func setEvaluator(_ evaluate: @escaping Evaluate) { self.evaluate = evaluate }

    /// Arms (or disarms, with nil) a session's wake-up in memory. The durable copy is written by
    /// the evaluation that computed it.
    public func arm(_ session: SessionID, at due: Date?) {
        guard let due else {
            armed[session] = nil
            return
        }
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
    public func poke(_ session: SessionID) { arm(session, at: clock.now()) }

    /// How many sessions have a wake-up armed.
    public var armedCount: Int { armed.count }

    public func run() async throws {
        let wakeUps = try await store.wakeUps()
        for wakeUp in wakeUps { arm(wakeUp.sessionId, at: wakeUp.dueAt) }
        logger.info("wake-ups re-armed from the store", metadata: ["count": "\(wakeUps.count)"])
        // Graceful shutdown cancels the loop; returning (not throwing) ends the service cleanly.
        await cancelWhenGracefulShutdown {
            await self.loop()
        }
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
                    group.addTask { [self] in
                        let next = await Task { await self.evaluateNow(id) }.value
                        await self.finished(id, next: next)
                    }
                }
                // With sessions waiting for a slot, the next `finished` wakes the loop.
                await sleep(until: waiting.isEmpty ? heap.peek?.dueAt : nil)
            }
        }
    }

    /// How many evaluations run at once.
    static let concurrencyLimit = 64
    private var evaluating: Set<SessionID> = []
    private var waiting: [SessionID] = []
    private var dueAgain: Set<SessionID> = []

    private func evaluateNow(_ id: SessionID) async -> Date? {
        guard let evaluate else { return nil }
        return await evaluate(id)
    }

    /// An evaluation ended: arm the next wake-up it computed (unless an earlier one was armed
    /// meanwhile), or evaluate again at once when the session came due during it.
    private func finished(_ id: SessionID, next: Date?) {
        evaluating.remove(id)
        if dueAgain.remove(id) != nil {
            arm(id, at: clock.now())
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
        let delayMs = due.map { max(1, $0.milliseconds(since: clock.now())) } ?? 60_000
        let task = Task<Void, Never> { try? await Task.sleep(for: .milliseconds(delayMs)) }
        sleeper = task
        sleepingUntil = due ?? clock.now().adding(milliseconds: delayMs)
        await withTaskCancellationHandler { await task.value } onCancel: { task.cancel() }
        sleeper = nil
        sleepingUntil = nil
    }
}

/// A binary min-heap of wake-ups by due time.
struct WakeUpHeap {
    private var items: [WakeUp] = []

    var peek: WakeUp? { items.first }
    var count: Int { items.count }

    mutating func push(_ item: WakeUp) {
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
    mutating func pop() -> WakeUp? {
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
