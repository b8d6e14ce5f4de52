import Foundation

extension EventType {
    /// An agent asks: `{requestId, kind: permission|question|budget, tool?, input?, options?, question?, choices?}`.
    public static let inputRequested = "input.requested"
    /// A request was resolved: `{requestId, decision: allow|deny|answer|timeout|cancelled, by: user|rule|timeout|interrupt, optionId?, answer?}`.
    public static let inputResolved = "input.resolved"
}

extension InputRequest {
    /// The most pending requests a session holds: a runtime asking more is denied at once.
    public static let maxPending = 20
    /// The longest tool input summary kept, in bytes of its JSON text (a longer one is cut).
    public static let maxInputBytes = 8192

    /// A request as the runtime reported it (`input.requested`'s data), bounded; nil when it
    /// is malformed (no id, an unknown kind) or of kind `budget`, which only the control plane
    /// raises: an agent must not be able to ask a user to raise its own budget.
    public init?(reported data: [String: JSONValue], executionId: ExecutionID, at: Date) {
        guard let id = data["requestId"]?.stringValue, Self.isRequestId(id),
            let kind = data["kind"]?.stringValue.flatMap(InputKind.init(rawValue:)), kind != .budget
        else { return nil }
        self.init(id: id, executionId: executionId, kind: kind, requestedAt: at)
        tool = data["tool"]?.stringValue.map { String($0.prefix(200)) }
        if let input = data["input"], input != .null {
            let text = JSONText.encode(input)
            self.input = text.utf8.count <= Self.maxInputBytes ? input : .string(String(decoding: Array(text.utf8.prefix(Self.maxInputBytes)), as: UTF8.self))
        }
        if case .array(let items) = data["options"] {
            let parsed = items.prefix(20).compactMap { item -> InputOption? in
                guard let id = item["id"]?.stringValue, let kind = item["kind"]?.stringValue.flatMap(InputOption.Kind.init(rawValue:)) else { return nil }
                return InputOption(id: String(id.prefix(200)), name: String((item["name"]?.stringValue ?? id).prefix(200)), kind: kind)
            }
            options = parsed.isEmpty ? nil : parsed
        }
        question = data["question"]?.stringValue.map { String($0.prefix(10_000)) }
        if case .array(let items) = data["choices"] {
            let parsed = items.prefix(50).compactMap { $0.stringValue.map { String($0.prefix(500)) } }
            choices = parsed.isEmpty ? nil : parsed
        }
    }

    /// `[A-Za-z0-9_.:-]{1,128}`.
    public static func isRequestId(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= 128
            && id.utf8.allSatisfy { byte in
                (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == 0x5F || byte == 0x2E
                    || byte == 0x3A || byte == 0x2D
            }
    }

    /// The option an allow or a deny picks when the user named none: the agent's own, of the
    /// matching kind ("always" ones for an always answer, when the agent offers them).
    public func option(allow: Bool, always: Bool) -> InputOption? {
        let preferred: [InputOption.Kind] =
            switch (allow, always) {
            case (true, true): [.allowAlways, .allowOnce]
            case (true, false): [.allowOnce, .allowAlways]
            case (false, true): [.rejectAlways, .rejectOnce]
            case (false, false): [.rejectOnce, .rejectAlways]
            }
        for kind in preferred { if let option = options?.first(where: { $0.kind == kind }) { return option } }
        return nil
    }
}

extension SessionReducer {
    /// Records a request's resolution in the session, and gives back its `input.resolved`
    /// event and, when the agent is still waiting for it, the reply for the runtime.
    static func resolveInput(
        _ session: inout SessionRecord, _ request: InputRequest, _ resolution: InputResolution, replyToAgent: Bool
    ) -> (event: NewEvent, reply: OutboxCommand?) {
        session.inputs.resolve(request.id, resolution)
        let event = NewEvent(
            executionId: request.executionId, type: EventType.inputResolved, at: resolution.at, data: resolution.eventData(requestId: request.id))
        let reply =
            replyToAgent
            ? OutboxCommand.answer(
                InputReply(
                    executionId: request.executionId, requestId: request.id, decision: resolution.decision, optionId: resolution.optionId,
                    answer: resolution.answer))
            : nil
        return (event, reply)
    }

    /// A request the runtime just reported: recorded pending, or resolved at once by one of the
    /// session's "always" rules (or denied, past `InputRequest.maxPending`). Gives back the
    /// events and the reply for the runtime, if any.
    static func recordInputRequest(
        _ session: inout SessionRecord, _ request: InputRequest, now: Date
    ) -> (events: [NewEvent], reply: OutboxCommand?, callback: CallbackDelivery?) {
        guard session.inputs.request(request.id) == nil else { return ([], nil, nil) }
        let tooMany = session.inputs.pending.count >= InputRequest.maxPending
        session.inputs.requests.append(request)
        var events = [NewEvent(executionId: request.executionId, type: EventType.inputRequested, at: now, data: request.eventData)]
        let resolution: InputResolution
        if let rule = session.inputs.rule(for: request) {
            resolution = InputResolution(
                decision: rule.allow ? .allow : .deny, by: .rule, optionId: request.option(allow: rule.allow, always: true)?.id, at: now)
        } else if tooMany {
            resolution = InputResolution(decision: .deny, by: .rule, optionId: request.option(allow: false, always: false)?.id, at: now)
        } else {
            // It waits for a user: the session's callback says so.
            return (events, nil, CallbackDelivery.inputRequested(request, session: session, now: now))
        }
        let resolved = resolveInput(&session, request, resolution, replyToAgent: true)
        events.append(resolved.event)
        return (events, resolved.reply, nil)
    }

    /// Cancels the pending requests of an execution (an interrupt): the runtime's kill tells
    /// the agent. Gives back the `input.resolved` events.
    static func cancelInputs(_ session: inout SessionRecord, of execution: ExecutionID, now: Date) -> [NewEvent] {
        session.inputs.pending.filter { $0.executionId == execution }.map { request in
            resolveInput(&session, request, InputResolution(decision: .cancelled, by: .interrupt, at: now), replyToAgent: false).event
        }
    }

    /// An API user answers a pending request. The first answer wins: a resolved request is a
    /// 409; an answer of the wrong shape for the request's kind (an answer to a permission, an
    /// option the agent did not offer, an allow whose option rejects) is a 400 naming the field.
    /// An "always" answer (or an always option) becomes the session's rule for that tool.
    public static func answerInput(
        _ state: SessionState?, id: SessionID, owner: Owner, requestId: String, answer: InputAnswer, context: SessionContext
    ) throws(SessionError) -> Decision<Outcome<InputRequest>> {
        var session = try owned(state, id: id, by: owner)
        guard let request = session.inputs.request(requestId) else { throw .inputNotFound(requestId) }
        if let resolution = request.resolution {
            throw .invalidState("input request \(requestId) was already resolved (\(resolution.decision.rawValue) by \(resolution.by.rawValue))")
        }
        let now = context.now
        var resolution: InputResolution
        var rule: ApprovalRule?
        switch (request.kind, answer) {
        case (.permission, .decision(let allow, let optionId, let always)), (.budget, .decision(let allow, let optionId, let always)):
            var option: InputOption?
            if let optionId {
                guard let named = request.options?.first(where: { $0.id == optionId }) else {
                    throw .invalidRequest(field: "optionId", "is not one of the request's options")
                }
                guard named.kind.allows == allow else {
                    throw .invalidRequest(field: "optionId", "\(named.kind.rawValue) does not \(allow ? "allow" : "deny")")
                }
                option = named
            } else {
                option = request.option(allow: allow, always: always)
            }
            resolution = InputResolution(decision: allow ? .allow : .deny, by: .user, optionId: option?.id, at: now)
            if always || option?.kind.always == true, request.kind == .permission, let tool = request.tool {
                rule = ApprovalRule(tool: tool, allow: allow, requestId: request.id)
            }
        case (.question, .answer(let value)):
            resolution = InputResolution(decision: .answer, by: .user, answer: value, at: now)
        case (.question, .decision(let allow, _, _)):
            guard !allow else { throw .invalidRequest(field: "decision", "a question takes an answer (or deny to decline it)") }
            resolution = InputResolution(decision: .deny, by: .user, at: now)
        case (.permission, .answer), (.budget, .answer):
            throw .invalidRequest(field: "answer", "request \(requestId) is a \(request.kind.rawValue): answer it with decision allow or deny")
        }
        if let rule { session.inputs.remember(rule) }
        // The agent waits only while its execution is active; otherwise the rules cancel it.
        // A budget request is the control plane's own: its answer goes nowhere but here.
        let active = session.activeExecutionId == request.executionId
        let resolved = resolveInput(&session, request, resolution, replyToAgent: active && request.kind != .budget)
        session.updatedAt = now
        var events = [resolved.event]
        var commands: [OutboxCommand] = resolved.reply.map { [$0] } ?? []
        var drops: [CommandDrop] = []
        if request.kind == .budget {
            let step = answerBudget(&session, request, allowed: resolution.decision == .allow)
            commands += step.commands
            drops += step.drops
        }
        // Later pending requests of the same tool that the new rule answers.
        if let rule {
            for later in session.inputs.pending where later.kind == .permission && later.tool == rule.tool {
                let byRule = resolveInput(
                    &session, later,
                    InputResolution(decision: rule.allow ? .allow : .deny, by: .rule, optionId: later.option(allow: rule.allow, always: true)?.id, at: now),
                    replyToAgent: session.activeExecutionId == later.executionId
                )
                events.append(byRule.event)
                commands += byRule.reply.map { [$0] } ?? []
            }
        }
        var output = request
        output.resolution = resolution
        return Decision(
            change: SessionChange(sessionId: session.id, session: session, events: events, commands: commands, dropCommands: drops),
            effects: commands.isEmpty ? [] : [.deliverCommands],
            output: Outcome(
                output: output,
                notes: [.inputResolved(requestId, resolution.decision, by: resolution.by, waitedMs: now.milliseconds(since: request.requestedAt))])
        )
    }
}
