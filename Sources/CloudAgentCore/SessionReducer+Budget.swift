import Foundation

extension SessionReducer {
    /// The interrupt reason of an execution stopped at its session's budget.
    public static let budgetReason = "budget"

    /// What a budget decision adds to the change it is part of.
    struct BudgetStep {
        var events: [NewEvent] = []
        var commands: [OutboxCommand] = []
        var drops: [CommandDrop] = []
        var callback: CallbackDelivery?
        var notes: [DecisionNote] = []
    }

    /// After a usage report of the active `execution`: when the session's usage has reached its
    /// budget (raised by each continue), the execution is interrupted (approvals `auto`), or
    /// held — its agent paused — behind an input request of kind `budget` (approvals `ask`).
    /// Nothing while such a request waits, or once the execution is being stopped for it.
    static func checkBudget(_ session: inout SessionRecord, _ execution: ExecutionID, now: Date) -> BudgetStep? {
        guard session.budgetStopped != execution, let budget = session.spec.budget, let allowance = session.budgetAllowance,
            let crossing = allowance.crossed(by: session.usageTotal),
            !session.inputs.pending.contains(where: { $0.kind == .budget && $0.executionId == execution })
        else { return nil }
        var step = BudgetStep()
        guard session.spec.approvals == .ask else {
            step.notes.append(.budgetReached(execution, measure: crossing.measure.rawValue, used: crossing.used, limit: crossing.limit, asked: false))
            stopForBudget(&session, execution, into: &step)
            return step
        }
        let more = crossing.measure == .cost ? budget.maxCostUsd ?? 0 : Double(budget.maxTokens ?? 0)
        let request = InputRequest(
            id: "budget_\(now.millisecondsSince1970)", executionId: execution, kind: .budget,
            input: [
                "measure": .string(crossing.measure.rawValue), "used": .number(crossing.used), "limit": .number(crossing.limit),
                "more": .number(more),
            ],
            options: [
                InputOption(id: "continue", name: "Continue with \(crossing.amount(more)) more", kind: .allowOnce),
                InputOption(id: "stop", name: "Stop the agent", kind: .rejectOnce),
            ],
            question:
                "This session has used \(crossing.amount(crossing.used)) of its \(crossing.amount(crossing.limit)) budget. Continue with \(crossing.amount(more)) more?",
            requestedAt: now
        )
        let recorded = recordInputRequest(&session, request, now: now)
        step.events = recorded.events
        step.callback = recorded.callback
        step.notes.append(.budgetReached(execution, measure: crossing.measure.rawValue, used: crossing.used, limit: crossing.limit, asked: true))
        if session.inputs.request(request.id)?.isPending == true {
            // The agent waits where it is until the answer.
            step.drops.append(.execution(execution, kinds: OutboxCommand.holdKinds))
            step.commands.append(.pause(execution))
            step.notes.append(.inputRequested(request.id, .budget))
        } else {
            // Denied at once (too many requests pending).
            stopForBudget(&session, execution, into: &step)
        }
        return step
    }

    /// The answer to a budget request: a continue raises the allowance by the budget's amount
    /// and lets the agent go on; a deny or a timeout interrupts the execution with reason `budget`.
    static func answerBudget(_ session: inout SessionRecord, _ request: InputRequest, allowed: Bool) -> BudgetStep {
        var step = BudgetStep()
        let active = session.activeExecutionId == request.executionId
        if allowed {
            session.budgetRaises = (session.budgetRaises ?? 0) + 1
            if active {
                step.drops.append(.execution(request.executionId, kinds: OutboxCommand.holdKinds))
                step.commands.append(.resume(request.executionId))
            }
        } else if active {
            stopForBudget(&session, request.executionId, into: &step)
        }
        return step
    }

    /// A new budget (a PATCH): the agent held at the old one goes on when the session's usage is
    /// under the new one; its request is resolved `allow` by the user.
    static func releaseBudgetWaits(_ session: inout SessionRecord, now: Date) -> BudgetStep {
        var step = BudgetStep()
        let stillCrossed = session.budgetAllowance?.crossed(by: session.usageTotal) != nil
        guard !stillCrossed else { return step }
        for request in session.inputs.pending where request.kind == .budget {
            let resolved = resolveInput(&session, request, InputResolution(decision: .allow, by: .user, at: now), replyToAgent: false)
            step.events.append(resolved.event)
            if session.activeExecutionId == request.executionId {
                step.drops.append(.execution(request.executionId, kinds: OutboxCommand.holdKinds))
                step.commands.append(.resume(request.executionId))
            }
        }
        return step
    }

    /// The runtime is told to kill the execution (which lets a held agent go first), reported
    /// `interrupted` with reason `budget`.
    private static func stopForBudget(_ session: inout SessionRecord, _ execution: ExecutionID, into step: inout BudgetStep) {
        session.budgetStopped = execution
        step.drops.append(.execution(execution, kinds: ["kill"]))
        step.commands.append(.kill(execution, reason: budgetReason))
    }
}
