import Foundation

/// A refused input, naming the field. `tooLarge` refusals are answered 413, the rest 400.
public struct ValidationError: Error, Equatable, CustomStringConvertible {
    public var field: String
    public var message: String
    public var tooLarge: Bool

    public init(field: String, _ message: String, tooLarge: Bool = false) {
        self.field = field
        self.message = message
        self.tooLarge = tooLarge
    }

    public var description: String { "\(field): \(message)" }
}

/// The limits of the API contract, in one place.
public enum Limits {
    public static let promptCharacters = 100_000
    public static let variables = 50
    public static let variableNameCharacters = 128
    public static let variableValueCharacters = 4096
    public static let reservedVariableNames: Set<String> = ["HOME", "PATH", "SESSION_ID", "SESSION_HOME"]
    public static let setupCommands = 20
    public static let setupCommandCharacters = 500
    public static let branchCharacters = 255
    public static let urlCharacters = 2048
    public static let tokenCharacters = 4096
    public static let nameCharacters = 200
    public static let callbackHeaders = 20
    public static let maxIdleTimeoutMs: Int64 = 90 * 86_400_000
    /// A session budget's largest amounts.
    public static let maxBudgetUsd: Double = 1_000_000
    public static let maxBudgetTokens: Int64 = 1_000_000_000_000
    /// Request bodies larger than this are refused with 413 before they are parsed.
    public static let requestBodyBytes = 2 * 1024 * 1024
}

/// A field of a PATCH body: absent (leave it), null (clear it) or a new value.
public enum FieldUpdate<Value: Sendable & Equatable>: Sendable, Equatable {
    case unchanged
    case clear
    case set(Value)
}

/// A session's writable fields as the user sent them, validated, secrets still in plain text.
public struct SessionInput: Sendable, Equatable {
    public struct Repo: Sendable, Equatable {
        public var url: String
        public var branch: String?
        public var token: String?
    }

    public struct Callback: Sendable, Equatable {
        public var url: String
        public var headers: [String: String]
    }

    public var prompt: FieldUpdate<String> = .unchanged
    public var agent: FieldUpdate<String> = .unchanged
    public var mode: FieldUpdate<String> = .unchanged
    public var model: FieldUpdate<String> = .unchanged
    public var repo: FieldUpdate<Repo> = .unchanged
    public var envVars: FieldUpdate<[String: String]> = .unchanged
    public var secrets: FieldUpdate<[String: String]> = .unchanged
    public var setupCommands: FieldUpdate<[String]> = .unchanged
    public var autoCommit: FieldUpdate<Bool> = .unchanged
    public var callback: FieldUpdate<Callback> = .unchanged
    public var idleTimeoutMs: FieldUpdate<Int64> = .unchanged
    public var approvals: FieldUpdate<ApprovalMode> = .unchanged
    public var mcpServers: FieldUpdate<[String: MCPServerSpec]> = .unchanged
    public var budget: FieldUpdate<Budget> = .unchanged

    public init() {}

    static let fields: Set<String> = [
        "prompt", "agent", "mode", "model", "repo", "envVars", "secrets", "setupCommands", "autoCommit",
        "callback", "idleTimeoutMs", "approvals", "mcpServers", "budget",
    ]

    /// Whether only fields that may still change after a session was initiated change:
    /// `idleTimeoutMs` and `budget`.
    public var changesOnlyLiveFields: Bool {
        prompt == .unchanged && agent == .unchanged && mode == .unchanged && model == .unchanged
            && repo == .unchanged && envVars == .unchanged && secrets == .unchanged
            && setupCommands == .unchanged && autoCommit == .unchanged && callback == .unchanged && approvals == .unchanged
            && mcpServers == .unchanged
    }

    /// Parses a `POST /v1/sessions` body: `prompt` is required and nothing may be null.
    public static func parseCreate(_ body: JSONValue) throws(ValidationError) -> SessionInput {
        let input = try parse(body, allowNull: false)
        guard case .set = input.prompt else { throw ValidationError(field: "prompt", "is required") }
        return input
    }

    /// Parses a `PATCH /v1/sessions/{id}` body: every field optional, null clears.
    public static func parsePatch(_ body: JSONValue) throws(ValidationError) -> SessionInput {
        let input = try parse(body, allowNull: true)
        if input.prompt == .clear { throw ValidationError(field: "prompt", "cannot be cleared: a session needs a prompt") }
        return input
    }

    static func parse(_ body: JSONValue, allowNull: Bool) throws(ValidationError) -> SessionInput {
        guard case .object(let object) = body else { throw ValidationError(field: "body", "must be a JSON object") }
        if let unknown = object.keys.sorted().first(where: { !fields.contains($0) }) {
            throw ValidationError(field: unknown, "is not a known field")
        }
        var input = SessionInput()
        for key in object.keys.sorted() {
            let value = object[key]!
            if value.isNull {
                guard allowNull else { throw ValidationError(field: key, "must not be null") }
                try input.clear(key)
                continue
            }
            switch key {
            case "prompt": input.prompt = .set(try Validate.prompt(value, field: key))
            case "agent": input.agent = .set(try Validate.name(value, field: key))
            case "mode": input.mode = .set(try Validate.name(value, field: key))
            case "model": input.model = .set(try Validate.name(value, field: key))
            case "repo": input.repo = .set(try Validate.repo(value))
            case "envVars": input.envVars = .set(try Validate.variables(value, field: key))
            case "secrets": input.secrets = .set(try Validate.variables(value, field: key))
            case "setupCommands": input.setupCommands = .set(try Validate.setupCommands(value))
            case "autoCommit":
                guard let flag = value.boolValue else { throw ValidationError(field: key, "must be a boolean") }
                input.autoCommit = .set(flag)
            case "callback": input.callback = .set(try Validate.callback(value))
            case "idleTimeoutMs": input.idleTimeoutMs = .set(try Validate.idleTimeout(value))
            case "approvals":
                guard let mode = value.stringValue.flatMap(ApprovalMode.init(rawValue:)) else {
                    throw ValidationError(field: key, "must be auto or ask")
                }
                input.approvals = .set(mode)
            case "mcpServers": input.mcpServers = .set(try Validate.mcpServers(value))
            case "budget": input.budget = .set(try Validate.budget(value))
            default: break
            }
        }
        if case .set(let env) = input.envVars, case .set(let secrets) = input.secrets,
            let both = env.keys.sorted().first(where: { secrets[$0] != nil })
        {
            throw ValidationError(field: "secrets.\(both)", "is also in envVars: a name may be one or the other")
        }
        return input
    }

    mutating func clear(_ key: String) throws(ValidationError) {
        switch key {
        case "prompt": prompt = .clear
        case "agent": agent = .clear
        case "mode": mode = .clear
        case "model": model = .clear
        case "repo": repo = .clear
        case "envVars": envVars = .clear
        case "secrets": secrets = .clear
        case "setupCommands": setupCommands = .clear
        case "autoCommit": autoCommit = .clear
        case "callback": callback = .clear
        case "idleTimeoutMs": idleTimeoutMs = .clear
        case "approvals": approvals = .clear
        case "mcpServers": mcpServers = .clear
        case "budget": budget = .clear
        default: throw ValidationError(field: key, "is not a known field")
        }
    }
}

/// Field validators. Each throws a `ValidationError` naming the field.
public enum Validate {
    static let shellMetacharacters = Set(";|&$`<>(){}!*?[]'\"\\ \t\r\n")

    /// `{maxCostUsd?, maxTokens?}`: at least one, a cost > 0, a whole number of tokens ≥ 1.
    public static func budget(_ value: JSONValue) throws(ValidationError) -> Budget {
        guard case .object(let object) = value else { throw ValidationError(field: "budget", "must be an object {maxCostUsd?, maxTokens?}") }
        if let unknown = object.keys.sorted().first(where: { $0 != "maxCostUsd" && $0 != "maxTokens" }) {
            throw ValidationError(field: "budget.\(unknown)", "is not a known field (maxCostUsd, maxTokens)")
        }
        var budget = Budget()
        if let cost = object["maxCostUsd"], !cost.isNull {
            guard let amount = cost.doubleValue, amount.isFinite, amount > 0, amount <= Limits.maxBudgetUsd else {
                throw ValidationError(field: "budget.maxCostUsd", "must be a number of US dollars above 0 and at most \(Int(Limits.maxBudgetUsd))")
            }
            budget.maxCostUsd = amount
        }
        if let tokens = object["maxTokens"], !tokens.isNull {
            guard let count = tokens.doubleValue, count.isFinite, count >= 1, count <= Double(Limits.maxBudgetTokens), count.rounded() == count else {
                throw ValidationError(field: "budget.maxTokens", "must be a whole number of tokens from 1 to \(Limits.maxBudgetTokens)")
            }
            budget.maxTokens = Int64(count)
        }
        guard budget.maxCostUsd != nil || budget.maxTokens != nil else {
            throw ValidationError(field: "budget", "needs maxCostUsd or maxTokens (null clears the budget)")
        }
        return budget
    }

    public static func prompt(_ value: JSONValue, field: String) throws(ValidationError) -> String {
        guard let text = value.stringValue else { throw ValidationError(field: field, "must be a string") }
        guard !text.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
            throw ValidationError(field: field, "must not be empty")
        }
        guard text.unicodeScalars.count <= Limits.promptCharacters else {
            throw ValidationError(field: field, "is \(text.unicodeScalars.count) characters; the limit is \(Limits.promptCharacters)", tooLarge: true)
        }
        return text
    }

    /// A short identifier-like string (agent, mode, model).
    public static func name(_ value: JSONValue, field: String) throws(ValidationError) -> String {
        guard let text = value.stringValue else { throw ValidationError(field: field, "must be a string") }
        guard !text.isEmpty, text.count <= Limits.nameCharacters else {
            throw ValidationError(field: field, "must be 1 to \(Limits.nameCharacters) characters")
        }
        guard !text.unicodeScalars.contains(where: { CharacterSet.controlCharacters.contains($0) }) else {
            throw ValidationError(field: field, "must not contain control characters")
        }
        return text
    }

    public static func branch(_ text: String, field: String) throws(ValidationError) -> String {
        let allowed = text.utf8.allSatisfy { byte in
            (byte >= 0x30 && byte <= 0x39) || (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A)
                || byte == UInt8(ascii: ".") || byte == UInt8(ascii: "_") || byte == UInt8(ascii: "/") || byte == UInt8(ascii: "-")
        }
        guard allowed, (1...Limits.branchCharacters).contains(text.utf8.count) else {
            throw ValidationError(field: field, "must match [A-Za-z0-9._/-]{1,255}")
        }
        guard !text.hasPrefix("-"), !text.hasPrefix("/"), !text.hasSuffix("/"), !text.hasSuffix("."),
            !text.hasSuffix(".lock"), !text.contains(".."), !text.contains("//"), !text.contains("/.")
        else { throw ValidationError(field: field, "is not a valid git branch name") }
        return text
    }

    public static func repo(_ value: JSONValue) throws(ValidationError) -> SessionInput.Repo {
        guard case .object(let object) = value else { throw ValidationError(field: "repo", "must be an object") }
        if let unknown = object.keys.sorted().first(where: { !["url", "branch", "token"].contains($0) }) {
            throw ValidationError(field: "repo.\(unknown)", "is not a known field")
        }
        guard let url = object["url"]?.stringValue else { throw ValidationError(field: "repo.url", "is required and must be a string") }
        try repoURL(url)
        var branch: String?
        if let raw = object["branch"], !raw.isNull {
            guard let text = raw.stringValue else { throw ValidationError(field: "repo.branch", "must be a string") }
            branch = try Self.branch(text, field: "repo.branch")
        }
        var token: String?
        if let raw = object["token"], !raw.isNull {
            guard let text = raw.stringValue, !text.isEmpty, text.count <= Limits.tokenCharacters,
                !text.contains(where: \.isNewline)
            else { throw ValidationError(field: "repo.token", "must be a single-line string of 1 to \(Limits.tokenCharacters) characters") }
            token = text
        }
        return SessionInput.Repo(url: url, branch: branch, token: token)
    }

    /// https/http/ssh/git/file URLs, scp-like `user@host:path`, or an absolute local path;
    /// never a shell metacharacter, never a credential in the URL.
    public static func repoURL(_ url: String) throws(ValidationError) {
        let field = "repo.url"
        guard !url.isEmpty, url.count <= Limits.urlCharacters else {
            throw ValidationError(field: field, "must be 1 to \(Limits.urlCharacters) characters")
        }
        if url.contains(where: { shellMetacharacters.contains($0) }) || url.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F }) {
            throw ValidationError(field: field, "must not contain shell metacharacters, spaces or control characters")
        }
        guard !url.hasPrefix("-") else { throw ValidationError(field: field, "must not start with '-'") }
        if let schemeEnd = url.range(of: "://") {
            let scheme = url[..<schemeEnd.lowerBound].lowercased()
            guard ["https", "http", "ssh", "git", "file"].contains(scheme) else {
                throw ValidationError(field: field, "scheme \(scheme) is not supported (https, http, ssh, git, file)")
            }
            guard let components = URLComponents(string: url) else { throw ValidationError(field: field, "is not a valid URL") }
            if components.password != nil || (scheme != "ssh" && components.user != nil) {
                throw ValidationError(field: field, "must not carry credentials; pass them as repo.token")
            }
            return
        }
        if url.hasPrefix("/") { return }
        // scp-like: [user@]host:path
        if let colon = url.firstIndex(of: ":"), colon != url.startIndex, !url[..<colon].contains("/") { return }
        throw ValidationError(field: field, "must be an https/ssh/git/file URL, user@host:path, or an absolute path")
    }

    public static func variables(_ value: JSONValue, field: String) throws(ValidationError) -> [String: String] {
        guard case .object(let object) = value else { throw ValidationError(field: field, "must be an object of NAME: value") }
        guard object.count <= Limits.variables else {
            throw ValidationError(field: field, "has \(object.count) entries; the limit is \(Limits.variables)")
        }
        var result: [String: String] = [:]
        for name in object.keys.sorted() {
            guard isVariableName(name) else {
                throw ValidationError(
                    field: "\(field).\(name)", "name must match [A-Za-z_][A-Za-z0-9_]* and be at most \(Limits.variableNameCharacters) characters")
            }
            guard !Limits.reservedVariableNames.contains(name) else {
                throw ValidationError(field: "\(field).\(name)", "is reserved (HOME, PATH, SESSION_ID, SESSION_HOME)")
            }
            guard let text = object[name]?.stringValue else { throw ValidationError(field: "\(field).\(name)", "must be a string") }
            guard text.unicodeScalars.count <= Limits.variableValueCharacters else {
                throw ValidationError(field: "\(field).\(name)", "is \(text.unicodeScalars.count) characters; the limit is \(Limits.variableValueCharacters)")
            }
            guard !text.contains("\0") else { throw ValidationError(field: "\(field).\(name)", "must not contain NUL") }
            result[name] = text
        }
        return result
    }

    public static func isVariableName(_ name: String) -> Bool {
        guard let first = name.utf8.first, name.utf8.count <= Limits.variableNameCharacters else { return false }
        func letter(_ byte: UInt8) -> Bool { (byte >= 0x41 && byte <= 0x5A) || (byte >= 0x61 && byte <= 0x7A) || byte == UInt8(ascii: "_") }
        return letter(first) && name.utf8.allSatisfy { letter($0) || ($0 >= 0x30 && $0 <= 0x39) }
    }

    public static func setupCommands(_ value: JSONValue) throws(ValidationError) -> [String] {
        guard case .array(let items) = value else { throw ValidationError(field: "setupCommands", "must be an array of strings") }
        guard items.count <= Limits.setupCommands else {
            throw ValidationError(field: "setupCommands", "has \(items.count) commands; the limit is \(Limits.setupCommands)")
        }
        var commands: [String] = []
        for (index, item) in items.enumerated() {
            let field = "setupCommands[\(index)]"
            guard let text = item.stringValue else { throw ValidationError(field: field, "must be a string") }
            guard !text.trimmingCharacters(in: .whitespaces).isEmpty else { throw ValidationError(field: field, "must not be empty") }
            guard text.unicodeScalars.count <= Limits.setupCommandCharacters else {
                throw ValidationError(field: field, "is \(text.unicodeScalars.count) characters; the limit is \(Limits.setupCommandCharacters)")
            }
            guard !text.contains("\0") else { throw ValidationError(field: field, "must not contain NUL") }
            commands.append(text)
        }
        return commands
    }

    public static func callback(_ value: JSONValue) throws(ValidationError) -> SessionInput.Callback {
        guard case .object(let object) = value else { throw ValidationError(field: "callback", "must be an object") }
        if let unknown = object.keys.sorted().first(where: { !["url", "headers"].contains($0) }) {
            throw ValidationError(field: "callback.\(unknown)", "is not a known field")
        }
        guard let url = object["url"]?.stringValue else { throw ValidationError(field: "callback.url", "is required and must be a string") }
        // Control characters and spaces never belong in a URL (URLComponents lets a NUL through).
        guard url.count <= Limits.urlCharacters, !url.unicodeScalars.contains(where: { $0.value <= 0x20 || $0.value == 0x7F }),
            let components = URLComponents(string: url),
            let scheme = components.scheme?.lowercased(), ["http", "https"].contains(scheme),
            let host = components.host, !host.isEmpty
        else { throw ValidationError(field: "callback.url", "must be an http or https URL") }
        var headers: [String: String] = [:]
        if let raw = object["headers"], !raw.isNull {
            guard case .object(let entries) = raw else { throw ValidationError(field: "callback.headers", "must be an object of name: value") }
            guard entries.count <= Limits.callbackHeaders else {
                throw ValidationError(field: "callback.headers", "has \(entries.count) entries; the limit is \(Limits.callbackHeaders)")
            }
            let tokenCharacters = Set("!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
            for name in entries.keys.sorted() {
                let field = "callback.headers.\(name)"
                guard !name.isEmpty, name.count <= Limits.variableNameCharacters, name.allSatisfy({ tokenCharacters.contains($0) }) else {
                    throw ValidationError(field: field, "is not a valid header name")
                }
                guard let text = entries[name]?.stringValue, text.count <= Limits.variableValueCharacters,
                    !text.unicodeScalars.contains(where: { $0.value < 0x20 && $0 != "\t" })
                else { throw ValidationError(field: field, "must be a single-line string of at most \(Limits.variableValueCharacters) characters") }
                headers[name] = text
            }
        }
        return SessionInput.Callback(url: url, headers: headers)
    }

    public static func idleTimeout(_ value: JSONValue) throws(ValidationError) -> Int64 {
        guard let millis = value.intValue else { throw ValidationError(field: "idleTimeoutMs", "must be an integer number of milliseconds") }
        guard millis >= 1, millis <= Limits.maxIdleTimeoutMs else {
            throw ValidationError(field: "idleTimeoutMs", "must be between 1 and \(Limits.maxIdleTimeoutMs)")
        }
        return millis
    }
}
