import CloudAgentCore
import CloudAgentProtocol
import Foundation
import HTTPTypes
import Logging

extension SessionService {
    /// A follow-up's body: `{prompt, mode?, model?, queue?}`.
    public struct MessageInput: Sendable {
        public var prompt: String
        public var mode: String?
        public var model: String?
        /// Wait for the active execution (and those queued before) instead of a 409.
        public var queue = false

        public init(prompt: String, mode: String? = nil, model: String? = nil, queue: Bool = false) {
            self.prompt = prompt
            self.mode = mode
            self.model = model
            self.queue = queue
        }

        public static func parse(_ body: JSONValue) throws(ValidationError) -> MessageInput {
            guard case .object(let object) = body else { throw ValidationError(field: "body", "must be a JSON object") }
            if let unknown = object.keys.sorted().first(where: { !["prompt", "mode", "model", "queue"].contains($0) }) {
                throw ValidationError(field: unknown, "is not a known field")
            }
            guard let prompt = object["prompt"], !prompt.isNull else { throw ValidationError(field: "prompt", "is required") }
            var input = MessageInput(prompt: try Validate.prompt(prompt, field: "prompt"))
            if let mode = object["mode"], !mode.isNull { input.mode = try Validate.name(mode, field: "mode") }
            if let model = object["model"], !model.isNull { input.model = try Validate.name(model, field: "model") }
            if let queue = object["queue"], !queue.isNull {
                guard case .bool(let flag) = queue else { throw ValidationError(field: "queue", "must be true or false") }
                input.queue = flag
            }
            return input
        }
    }

    /// An accepted execution: started, or queued at `position` (1 = next).
    public struct Accepted: Sendable {
        public var execution: Execution
        public var position: Int?
    }

    /// Starts an execution: the prepared prompt (`initiate`) or a follow-up (`messages`).
    /// Answers at once: a stopped runtime is cold-started in the background, and one that is
    /// stopping is started again once its stop is recorded.
    public func startExecution(_ id: SessionID, owner: Owner, message: MessageInput?) async throws -> Execution {
        try await acceptExecution(id, owner: owner, message: message).execution
    }

    /// `startExecution`, with the queued execution's place in the queue.
    public func acceptExecution(_ id: SessionID, owner: Owner, message: MessageInput?) async throws -> Accepted {
        let current = try await session(id, owner: owner)
        // The agent may have gone since the session was prepared (a server started without it).
        try agents.requireAvailable(current.spec.agent)
        // A runtime start will be needed: admitted (or refused with 503) before anything changes,
        // by this host's capacity, unless another live node hosts the runtime (it starts there).
        let needsStart =
            (current.runtime.state == .stopped || current.runtime.state == .stopping)
            && lifecycle.startsHere(hostNode: current.runtime.hostNode)
        // Within the user's daily budget (else 429), before anything changes.
        try await requireDailyBudget(owner)
        // A start for it is within the user's quota (an idle runtime of theirs evicted, else 429).
        if current.runtime.state == .stopped || current.runtime.state == .stopping, current.activeExecutionId == nil {
            try await lifecycle.makeRoomInQuota(for: id, owner: owner, engine: engine)
        }
        let request = SessionReducer.NewExecution(
            id: ExecutionID(at: clock.now()), prompt: message?.prompt, mode: message?.mode, model: message?.model, followUp: message != nil,
            queue: message?.queue ?? false
        )
        do {
            // The admission stands when the decision launches the runtime, or starts it again
            // once its stop is recorded.
            let committed = try await lifecycle.admitting(
                id, if: needsStart && current.activeExecutionId == nil && current.queue.isEmpty, engine: engine,
                starts: { committed in
                    committed.effects.contains { if case .launch = $0 { true } else { false } } || committed.change?.session?.runtime.state == .stopping
                }
            ) {
                try await engine.perform(id) { state, context in
                    try SessionReducer.startExecution(state, id: id, owner: owner, request, context: context)
                }
            }
            let execution = committed.output
            let position = execution.status == .queued ? committed.change?.session?.queue.firstIndex(of: execution.id).map { $0 + 1 } : nil
            return Accepted(execution: execution, position: position)
        } catch StoreError.executionInProgress(let active) {
            throw SessionError.executionInProgress(active)
        }
    }

    /// A new execution (started or queued) past the user's daily budget is 429
    /// `BUDGET_EXCEEDED`. The cost is the user's usage table for today (UTC), which every node
    /// writes in the transaction of each usage report: the budget holds across nodes. Work
    /// accepted before the budget was reached (a running or queued execution) goes on.
    func requireDailyBudget(_ owner: Owner) async throws {
        guard let limit = ledger.userDailyBudgetUsd else { return }
        let now = clock.now()
        let today = UsageDay.day(of: now)
        let spent = try await store.usage(of: owner, from: today, to: today).reduce(0.0) { $0 + ($1.usage.costUsd ?? 0) }
        guard spent >= limit else { return }
        let tomorrow = UsageDay.calendar.date(byAdding: .day, value: 1, to: UsageDay.date(of: today) ?? now) ?? now
        logger.info(
            "execution refused: daily budget reached",
            metadata: ["owner": "\(owner.user)", "rule": "budget", "spentUsd": "\(spent)", "limitUsd": "\(limit)"])
        throw SessionError.limitReached(
            .dailyBudget, limit: limit,
            "the daily budget of $\(Self.dollars(limit)) is reached ($\(Self.dollars(spent)) spent today, UTC); new executions may start again at \(Timestamp.format(tomorrow))"
        )
    }

    private static func dollars(_ amount: Double) -> String { String(format: "%.2f", amount) }

    /// Cancels a queued execution before its turn.
    public func cancelQueued(_ executionId: ExecutionID, of id: SessionID, owner: Owner) async throws {
        _ = try await session(id, owner: owner)
        let known = try await store.execution(executionId).map { $0.sessionId == id } ?? false
        try await engine.perform(id) { state, context in
            try SessionReducer.cancelQueued(state, id: id, owner: owner, executionId: executionId, known: known, context: context)
        }
    }

    /// Interrupts the active execution (idempotent). A running one is killed by its runtime:
    /// SIGTERM to the agent's processes, SIGKILL after the grace; the request waits (bounded)
    /// until its end is recorded — an event, not a poll. A pending one ends at once.
    public func interrupt(_ id: SessionID, owner: Owner) async throws -> ExecutionID? {
        let committed = try await engine.perform(id) { state, context in try SessionReducer.interrupt(state, id: id, owner: owner, context: context) }
        let target: ExecutionID
        switch committed.output {
        case .none: return nil
        case .ended(let ended): target = ended
        case .asked(let asked):
            target = asked
            logger.info("execution interrupt requested", metadata: ["sessionId": "\(id)", "executionId": "\(asked)"])
            _ = await ledger.changes.wait(for: id, within: .milliseconds(timing.stopGraceMs + 3000)) {
                !((try? await self.store.execution(asked))?.status.isActive ?? false)
            }
        }
        return target
    }

    public func executions(of id: SessionID, owner: Owner) async throws -> [Execution] {
        _ = try await session(id, owner: owner)
        return try await store.executions(of: id)
    }

    public func execution(_ executionId: ExecutionID, of id: SessionID, owner: Owner) async throws -> Execution {
        _ = try await session(id, owner: owner)
        guard let execution = try await store.execution(executionId), execution.sessionId == id else {
            throw SessionError.executionNotFound(executionId)
        }
        return execution
    }

    public func events(of id: SessionID, owner: Owner, query: EventQuery) async throws -> [Event] {
        _ = try await session(id, owner: owner)
        return try await store.events(of: id, query)
    }
}

extension SessionService {
    /// An answer's body: `{decision: allow|deny, optionId?, always?}` or `{answer: text | {field: value}}`.
    public static func parseInputAnswer(_ body: JSONValue) throws(ValidationError) -> InputAnswer {
        guard case .object(let object) = body else { throw ValidationError(field: "body", "must be a JSON object") }
        if let unknown = object.keys.sorted().first(where: { !["decision", "optionId", "always", "answer"].contains($0) }) {
            throw ValidationError(field: unknown, "is not a known field")
        }
        if let answer = object["answer"], !answer.isNull {
            if let extra = ["decision", "optionId", "always"].first(where: { object[$0].map { !$0.isNull } ?? false }) {
                throw ValidationError(field: extra, "cannot be given with answer")
            }
            switch answer {
            case .string(let text):
                guard text.count <= 100_000 else { throw ValidationError(field: "answer", "must be at most 100,000 characters") }
            case .object(let fields):
                guard fields.count <= 100, JSONText.encode(answer).utf8.count <= 100_000 else {
                    throw ValidationError(field: "answer", "must be an object of at most 100 fields and 100,000 bytes")
                }
            default:
                throw ValidationError(field: "answer", "must be a string or an object of field: value")
            }
            return .answer(answer)
        }
        guard let decision = object["decision"]?.stringValue else {
            throw ValidationError(field: "decision", "is required (allow or deny), or give answer")
        }
        guard decision == "allow" || decision == "deny" else { throw ValidationError(field: "decision", "must be allow or deny") }
        var optionId: String?
        if let value = object["optionId"], !value.isNull {
            guard let text = value.stringValue, !text.isEmpty, text.count <= 200 else {
                throw ValidationError(field: "optionId", "must be a string of 1 to 200 characters")
            }
            optionId = text
        }
        var always = false
        if let value = object["always"], !value.isNull {
            guard case .bool(let flag) = value else { throw ValidationError(field: "always", "must be true or false") }
            always = flag
        }
        return .decision(allow: decision == "allow", optionId: optionId, always: always)
    }

    /// The session's input requests: the pending ones first (oldest first), then the resolved
    /// ones it keeps (newest first), with the session (for their deadlines).
    public func inputRequests(of id: SessionID, owner: Owner) async throws -> (session: SessionRecord, requests: [InputRequest]) {
        let current = try await session(id, owner: owner)
        let requests = current.inputs.requests
        let pending = requests.filter(\.isPending).sorted { $0.requestedAt < $1.requestedAt }
        let resolved = requests.filter { !$0.isPending }.sorted { ($0.resolution?.at ?? .distantPast) > ($1.resolution?.at ?? .distantPast) }
        return (current, pending + resolved.prefix(SessionInputs.resolvedKept))
    }

    /// Answers a pending input request: recorded, and sent to the runtime for the agent.
    public func answerInput(_ id: SessionID, owner: Owner, requestId: String, answer: InputAnswer) async throws -> InputRequest {
        let committed = try await engine.perform(id) { state, context in
            try SessionReducer.answerInput(state, id: id, owner: owner, requestId: requestId, answer: answer, context: context)
        }
        let resolved = committed.output
        logger.info(
            "input answered",
            metadata: [
                "sessionId": "\(id)", "executionId": "\(resolved.executionId)", "requestId": "\(requestId)",
                "decision": "\(resolved.resolution?.decision.rawValue ?? "-")",
            ])
        return resolved
    }

    /// When each pending request of `session` times out (nil for a resolved one): the deadline
    /// the session's rules go by, from the same context a decision made now would have.
    public func inputDeadlines(of requests: [InputRequest], in session: SessionRecord) -> [Date?] {
        let heardSince = ledger.context().heardSince(session)
        return requests.map { request in
            request.isPending ? SessionInputs.deadline(of: request, timeoutMs: timing.inputTimeoutMs, heardSince: heardSince) : nil
        }
    }
}
