import CloudAgentCore
import Foundation
import Testing

/// Budgets as pure decisions: what crosses a budget, and what the crossing does — an interrupt
/// (approvals `auto`), or the agent held behind a `budget` request (approvals `ask`) that an
/// allow, a deny, a timeout or a new budget resolves.
@Suite("Budgets")
struct BudgetTests {
    typealias Queue = MessageQueueTests
    static let id = MessageQueueTests.first

    /// The queue tests' running session, with `budget` and `approvals`.
    static func running(_ budget: Budget, approvals: ApprovalMode) throws -> SessionState {
        var state = try Queue.running()
        state.session.spec.budget = budget
        state.session.spec.approvals = approvals
        return state
    }

    static func usage(_ state: SessionState, seq: Int64, _ data: [String: JSONValue], at offset: Int64) throws -> (SessionState, SessionChange?) {
        let (next, decision) = try Queue.performed(state, at: offset) {
            try SessionReducer.ingest(
                $0, instanceId: "instance-1", events: [ReportedEvent(seq: seq, executionId: id.rawValue, kind: .usage, at: Fixture.at(offset), data: data)],
                context: Queue.context(at: offset))
        }
        return (next, decision.change)
    }

    static func answer(_ state: SessionState, _ requestId: String, allow: Bool, at offset: Int64) throws -> (SessionState, SessionChange?) {
        let decision = try SessionReducer.answerInput(
            state, id: Fixture.sessionId, owner: .local, requestId: requestId, answer: .decision(allow: allow, optionId: nil, always: false),
            context: Queue.context(at: offset))
        return (Queue.after(decision, state), decision.change)
    }

    @Test("the allowance grows by the budget's own amount with each raise; cost is checked first, and a cost budget ignores an agent that reports no cost")
    func crossing() {
        let budget = Budget(maxCostUsd: 0.5, maxTokens: 1000)
        #expect(budget.allowance(raises: 0) == budget)
        #expect(budget.allowance(raises: 2) == Budget(maxCostUsd: 1.5, maxTokens: 3000))
        #expect(budget.crossed(by: nil) == nil)
        #expect(budget.crossed(by: Usage(inputTokens: 10, costUsd: 0.49)) == nil)
        #expect(budget.crossed(by: Usage(inputTokens: 10, costUsd: 0.5)) == BudgetCrossing(measure: .cost, used: 0.5, limit: 0.5))
        // Every kind of token counts.
        #expect(
            budget.crossed(by: Usage(inputTokens: 400, outputTokens: 300, cacheReadTokens: 200, cacheWriteTokens: 100))
                == BudgetCrossing(measure: .tokens, used: 1000, limit: 1000))
        #expect(Budget(maxCostUsd: 0.5).crossed(by: Usage(inputTokens: 1_000_000)) == nil)
        #expect(BudgetCrossing(measure: .cost, used: 2, limit: 1).amount(1.25) == "$1.25")
        #expect(BudgetCrossing(measure: .tokens, used: 2, limit: 1).amount(12_345) == "12,345 tokens")
    }

    @Test("budget fields are validated: at least one measure, a positive cost, a whole number of tokens, no unknown key")
    func validation() throws {
        #expect(try Validate.budget(["maxCostUsd": .number(2.5)]) == Budget(maxCostUsd: 2.5))
        #expect(try Validate.budget(["maxTokens": 5000, "maxCostUsd": nil]) == Budget(maxTokens: 5000))
        for (body, field) in [
            (JSONValue.string("5"), "budget"), ([:], "budget"), (["maxCostUsd": 0], "budget.maxCostUsd"), (["maxCostUsd": "1"], "budget.maxCostUsd"),
            (["maxTokens": .number(1.5)], "budget.maxTokens"), (["maxTokens": 0], "budget.maxTokens"), (["maxDollars": 1], "budget.maxDollars"),
        ] as [(JSONValue, String)] {
            #expect(throws: ValidationError.self) { try Validate.budget(body) }
            do {
                _ = try Validate.budget(body)
            } catch {
                #expect(error.field == field, "\(body)")
            }
        }
        let input = try SessionInput.parsePatch(["budget": ["maxTokens": 10]])
        #expect(input.budget == .set(Budget(maxTokens: 10)) && input.changesOnlyLiveFields)
        #expect(try SessionInput.parsePatch(["budget": nil]).budget == .clear)
    }

    @Test("approvals auto: the report that crosses the budget sends one kill with reason budget; later reports send no other")
    func autoKills() throws {
        let state = try Self.running(Budget(maxCostUsd: 1), approvals: .auto)
        let (under, underChange) = try Self.usage(state, seq: 2, ["costUsd": .number(0.4)], at: seconds(2))
        #expect(underChange?.commands.isEmpty == true)
        let (crossed, change) = try Self.usage(under, seq: 3, ["costUsd": .number(1.2)], at: seconds(3))
        #expect(change?.commands == [.kill(Self.id, reason: "budget")])
        #expect(crossed.session.budgetStopped == Self.id)
        #expect(crossed.session.inputs.requests.isEmpty)
        let (_, later) = try Self.usage(crossed, seq: 4, ["costUsd": .number(1.5)], at: seconds(4))
        #expect(later?.commands.isEmpty == true)
    }

    @Test(
        "approvals ask: the crossing raises one budget request and pauses the agent; allow raises the allowance and resumes it; the next crossing asks again, and a deny kills with reason budget"
    )
    func askAllowDeny() throws {
        let state = try Self.running(Budget(maxTokens: 100), approvals: .ask)
        let (asked, change) = try Self.usage(state, seq: 2, ["inputTokens": 90, "outputTokens": 20], at: seconds(2))
        let request = try #require(asked.session.inputs.pending.first)
        #expect(request.kind == .budget && request.executionId == Self.id)
        #expect(request.question == "This session has used 110 tokens of its 100 tokens budget. Continue with 100 tokens more?")
        #expect(change?.commands == [.pause(Self.id)])
        #expect(change?.dropCommands == [.execution(Self.id, kinds: ["pause", "resume"])])
        #expect(change?.events.map(\.type) == [EventType.inputRequested])
        // While it waits, more usage asks nothing more.
        let (waiting, more) = try Self.usage(asked, seq: 3, ["inputTokens": 95, "outputTokens": 20], at: seconds(3))
        #expect(waiting.session.inputs.pending.count == 1 && more?.commands.isEmpty == true)

        let (allowed, allowChange) = try Self.answer(waiting, request.id, allow: true, at: seconds(4))
        #expect(allowed.session.budgetRaises == 1 && allowed.session.budgetAllowance == Budget(maxTokens: 200))
        // The answer is the control plane's own: the runtime gets a resume, not an answer.
        #expect(allowChange?.commands == [.resume(Self.id)])
        #expect(allowed.session.inputs.pending.isEmpty)

        let (under, underChange) = try Self.usage(allowed, seq: 4, ["inputTokens": 150, "outputTokens": 40], at: seconds(5))
        #expect(under.session.inputs.pending.isEmpty && underChange?.commands.isEmpty == true)
        let (again, _) = try Self.usage(under, seq: 5, ["inputTokens": 170, "outputTokens": 40], at: seconds(6))
        let second = try #require(again.session.inputs.pending.first)
        #expect(second.id != request.id)
        #expect(second.question == "This session has used 210 tokens of its 200 tokens budget. Continue with 100 tokens more?")
        let (denied, denyChange) = try Self.answer(again, second.id, allow: false, at: seconds(7))
        #expect(denyChange?.commands == [.kill(Self.id, reason: "budget")])
        #expect(denied.session.budgetStopped == Self.id)
        let (_, afterDeny) = try Self.usage(denied, seq: 6, ["inputTokens": 400, "outputTokens": 40], at: seconds(8))
        #expect(afterDeny?.commands.isEmpty == true && afterDeny?.events.isEmpty == true, "no new request once stopped for the budget")
    }

    @Test("a new execution in a session already over its budget is checked when its agent starts: held behind a request (ask), killed (auto)")
    func checkedAtStart() throws {
        for approvals in [ApprovalMode.ask, .auto] {
            var state = try Self.running(Budget(maxTokens: 10), approvals: approvals)
            // The session is over its budget from an earlier execution; the active one has just been sent.
            state.session.usageTotal = Usage(inputTokens: 50)
            state.execution?.status = .pending
            state.session.budgetStopped = ExecutionID(at: Fixture.at(0))
            let decision = try SessionReducer.ingest(
                state, instanceId: "instance-1", events: [ReportedEvent(seq: 2, executionId: Self.id.rawValue, kind: .running, at: Fixture.at(seconds(2)))],
                context: Queue.context(at: seconds(2)))
            switch approvals {
            case .ask:
                #expect(decision.change?.commands == [.pause(Self.id)])
                #expect(decision.change?.session?.inputs.pending.first?.kind == .budget)
            case .auto:
                #expect(decision.change?.commands == [.kill(Self.id, reason: "budget")])
            }
        }
    }

    @Test("a runtime cannot raise a budget request: one reported with kind budget is refused as malformed and recorded nowhere")
    func runtimeCannotAskForBudget() throws {
        let state = try Self.running(Budget(maxCostUsd: 1), approvals: .ask)
        let data: [String: JSONValue] = ["requestId": "raise-me", "kind": "budget", "question": "Continue with $1000 more?"]
        #expect(InputRequest(reported: data, executionId: Self.id, at: Fixture.at(seconds(2))) == nil)
        let decision = try SessionReducer.ingest(
            state, instanceId: "instance-1",
            events: [ReportedEvent(seq: 2, executionId: Self.id.rawValue, kind: .inputRequested, at: Fixture.at(seconds(2)), data: data)],
            context: Queue.context(at: seconds(2)))
        #expect(decision.change?.session?.inputs.requests.isEmpty == true)
        #expect(decision.change?.events.isEmpty == true)
    }

    @Test("approvals ask: an unanswered budget request times out into a kill with reason budget")
    func timeout() throws {
        let state = try Self.running(Budget(maxCostUsd: 1), approvals: .ask)
        let (asked, _) = try Self.usage(state, seq: 2, ["costUsd": .number(3)], at: seconds(2))
        let due = seconds(2) + Queue.timing.inputTimeoutMs + 1
        let decision = try SessionReducer.evaluate(asked, context: Queue.context(at: due))
        #expect(decision.change?.commands.contains(.kill(Self.id, reason: "budget")) == true, "\(String(describing: decision.change?.commands))")
        #expect(decision.change?.events.first { $0.type == EventType.inputResolved }?.data["decision"] == "timeout")
        #expect(decision.change?.session?.budgetStopped == Self.id)
    }

    @Test("a new budget starts without raises, and an agent held at the old one goes on when the usage is under the new one")
    func newBudgetReleases() throws {
        let state = try Self.running(Budget(maxCostUsd: 1), approvals: .ask)
        let (asked, _) = try Self.usage(state, seq: 2, ["costUsd": .number(1.5)], at: seconds(2))
        func patch(_ budget: Budget, _ state: SessionState) throws -> (SessionState, SessionChange?) {
            let decision = try SessionReducer.edit(state, id: Fixture.sessionId, owner: .local, onlyLiveFields: true, context: Queue.context(at: seconds(3))) {
                $0.spec.budget = budget
            }
            return (Queue.after(decision, state), decision.change)
        }
        // Still under water: the request stays.
        let (stillHeld, heldChange) = try patch(Budget(maxCostUsd: 1.2), asked)
        #expect(stillHeld.session.inputs.pending.count == 1 && heldChange?.commands.isEmpty == true)
        let (released, change) = try patch(Budget(maxCostUsd: 5), stillHeld)
        #expect(released.session.inputs.pending.isEmpty)
        #expect(change?.commands == [.resume(Self.id)])
        #expect(change?.events.first?.data["decision"] == "allow" && change?.events.first?.data["by"] == "user")
    }
}
