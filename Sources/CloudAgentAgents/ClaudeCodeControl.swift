import CloudAgentProtocol

/// Claude Code's control protocol on its stdin and stdout, with `--input-format stream-json
/// --permission-prompt-tool stdio` (the wire format of the `claude-agent-sdk` wheel):
///
/// - the prompt goes in as a user message line, and stdin stays open for the answers;
/// - `{"type":"control_request","request_id","request":{"subtype":"can_use_tool","tool_name",
///   "input","tool_use_id",…}}` asks before a tool runs. Its AskUserQuestion tool asks the same
///   way (even under `bypassPermissions`), with `input.questions`;
/// - the answer is `{"type":"control_response","response":{"subtype":"success","request_id",
///   "response":{"behavior":"allow","updatedInput"}|{"behavior":"deny","message"}}}`; a question's
///   answers go back in `updatedInput.answers` (`{question text: answer}`);
/// - `{"type":"control_cancel_request","request_id"}` withdraws a request: no answer is due.
public enum ClaudeCodeControl {
    /// The user message that starts a turn.
    public static func promptLine(_ prompt: String) -> String {
        JSONText.encode([
            "type": "user", "message": ["role": "user", "content": .string(prompt)], "parent_tool_use_id": .null, "session_id": "default",
        ]) + "\n"
    }

    /// The tool whose permission request is a question for the user.
    public static let questionTool = "AskUserQuestion"

    /// What a `control_request` line becomes: a `can_use_tool` an input request; any other
    /// subtype an error answer at once (the runtime registers no hooks nor SDK MCP servers).
    static func controlRequest(_ object: [String: JSONValue], raw: String) -> [AgentOutputItem] {
        guard let requestId = object["request_id"]?.stringValue, !requestId.isEmpty else {
            return [.agent(AgentEventData.error("a control request without a request_id", raw: raw))]
        }
        let request = object["request"]?.objectValue ?? [:]
        let subtype = request["subtype"]?.stringValue ?? ""
        guard subtype == "can_use_tool" else {
            return [
                .agent(AgentEventData.log("control request \(subtype.isEmpty ? "?" : subtype) refused: not served here", raw: raw)),
                .reply(errorLine(requestId: requestId, message: "cloud-agent does not serve control requests of subtype \(subtype)")),
            ]
        }
        let tool = request["tool_name"]?.stringValue ?? "tool"
        let input = request["input"] ?? .object([:])
        if tool == questionTool, let questions = input["questions"]?.arrayValue, !questions.isEmpty {
            let texts = questions.compactMap { $0["question"]?.stringValue }
            var data: [String: JSONValue] = [
                "kind": "question", "tool": .string(tool), "question": .string(texts.joined(separator: "\n")), "input": input,
            ]
            // The choices of a single question (several questions are answered with an object).
            if questions.count == 1 {
                let labels = (questions[0]["options"]?.arrayValue ?? []).compactMap { $0["label"]?.stringValue }
                if !labels.isEmpty { data["choices"] = .array(labels.map { .string($0) }) }
            }
            return [.inputRequest(AgentInputRequest(data: data, reply: .claudeCode(requestId: requestId, tool: tool, input: input, question: true)))]
        }
        var data: [String: JSONValue] = ["kind": "permission", "tool": .string(tool), "input": input]
        if let description = request["description"]?.stringValue, !description.isEmpty { data["question"] = .string(description) }
        return [.inputRequest(AgentInputRequest(data: data, reply: .claudeCode(requestId: requestId, tool: tool, input: input, question: false)))]
    }

    /// The `control_response` that gives Claude Code the decision on request `requestId`.
    public static func responseLine(requestId: String, input: JSONValue, question: Bool, decision: String, answer: JSONValue?) -> String {
        let response: JSONValue
        switch decision {
        case "allow" where !question:
            response = ["behavior": "allow", "updatedInput": input]
        case "answer" where question:
            var updated = input.objectValue ?? [:]
            updated["answers"] = .object(answers(to: input["questions"]?.arrayValue ?? [], from: answer ?? .null))
            response = ["behavior": "allow", "updatedInput": .object(updated)]
        default:
            response = ["behavior": "deny", "message": .string(denial(decision: decision, question: question))]
        }
        return JSONText.encode([
            "type": "control_response",
            "response": ["subtype": "success", "request_id": .string(requestId), "response": response],
        ]) + "\n"
    }

    /// An error answer to a control request.
    static func errorLine(requestId: String, message: String) -> String {
        JSONText.encode([
            "type": "control_response", "response": ["subtype": "error", "request_id": .string(requestId), "error": .string(message)],
        ]) + "\n"
    }

    /// What the model is told when it may not go on.
    static func denial(decision: String, question: Bool) -> String {
        switch (decision, question) {
        case ("timeout", _): "Nobody answered within the input timeout, so this was denied."
        case ("cancelled", _): "The request was cancelled: the run is being stopped."
        case (_, true): "The user declined to answer."
        default: "The user denied this tool call."
        }
    }

    /// AskUserQuestion's `answers`, `{question text: answer}`. A text answers every question
    /// (usually there is one); an object names its questions by their text or their header, or
    /// by their position ("1", "2", …); a list of labels (a multi-select) is joined with ", ".
    static func answers(to questions: [JSONValue], from answer: JSONValue) -> [String: JSONValue] {
        var answers: [String: JSONValue] = [:]
        for (index, question) in questions.enumerated() {
            guard let text = question["question"]?.stringValue else { continue }
            let value = AgentEventData.answer(at: index, names: [text, question["header"]?.stringValue], in: answer)
            guard let value, let rendered = render(value) else { continue }
            answers[text] = .string(rendered)
        }
        return answers
    }

    private static func render(_ value: JSONValue) -> String? {
        switch value {
        case .string(let text): text
        case .array(let items): items.map { $0.stringValue ?? JSONText.encode($0) }.joined(separator: ", ")
        case .null: nil
        default: JSONText.encode(value)
        }
    }
}
