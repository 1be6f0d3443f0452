//! The redaction rules over real-looking command lines: each plants a fake
//! value, which must be gone from every argument and every `match`, while
//! the parts that say what the command does stay readable.

use super::*;

/// A command line, the values planted in it, and text that must stay.
struct Case {
    argv: &'static [&'static str],
    planted: &'static [&'static str],
    kept: &'static [&'static str],
}

const fn case(
    argv: &'static [&'static str],
    planted: &'static [&'static str],
    kept: &'static [&'static str],
) -> Case {
    Case {
        argv,
        planted,
        kept,
    }
}

const CASES: &[Case] = &[
    // Secret-named options, every spelling.
    case(
        &["app", "--password=Xq9Vz0001"],
        &["Xq9Vz0001"],
        &["--password="],
    ),
    case(
        &["app", "--password", "Xq9Vz0002"],
        &["Xq9Vz0002"],
        &["--password"],
    ),
    case(
        &["app", "--password", "-Xq9Vz0003"],
        &["-Xq9Vz0003"],
        &["--password"],
    ),
    case(
        &["app", "--password=-Xq9Vz0004"],
        &["-Xq9Vz0004"],
        &["--password="],
    ),
    case(
        &["app", "-password", "Xq9Vz0005"],
        &["Xq9Vz0005"],
        &["-password"],
    ),
    case(
        &["app", "--db-password", "Xq9Vz0006"],
        &["Xq9Vz0006"],
        &["--db-password"],
    ),
    case(
        &["app", "--passwd=Xq9Vz0007"],
        &["Xq9Vz0007"],
        &["--passwd="],
    ),
    case(
        &["app", "--api_key", "Xq9Vz0008"],
        &["Xq9Vz0008"],
        &["--api_key"],
    ),
    case(
        &["app", "--apiKey=Xq9Vz0009"],
        &["Xq9Vz0009"],
        &["--apiKey="],
    ),
    case(
        &["app", "--client-secret", "Xq9Vz0010"],
        &["Xq9Vz0010"],
        &["--client-secret"],
    ),
    case(
        &["app", "--token", "Xq9Vz0011"],
        &["Xq9Vz0011"],
        &["--token"],
    ),
    case(
        &["app", "--auth", "admin:Xq9Vz0012"],
        &["Xq9Vz0012"],
        &["--auth"],
    ),
    case(
        &["app", "--pass", "Xq9Vz0013 with spaces"],
        &["Xq9Vz0013"],
        &["--pass"],
    ),
    case(
        &["app", "--secret-access-key", "Xq9Vz0014"],
        &["Xq9Vz0014"],
        &["--secret-access-key"],
    ),
    case(
        &["app", "--access-token=Xq9Vz0015"],
        &["Xq9Vz0015"],
        &["--access-token="],
    ),
    case(
        &[
            "java",
            "-Djavax.net.ssl.keyStorePassword=Xq9Vz0016",
            "-jar",
            "app.jar",
        ],
        &["Xq9Vz0016"],
        &["-Djavax.net.ssl.keyStorePassword=", "app.jar"],
    ),
    case(
        &[
            "java",
            "-Dspring.datasource.password=Xq9Vz0017",
            "-jar",
            "app.jar",
        ],
        &["Xq9Vz0017"],
        &["app.jar"],
    ),
    case(
        &[
            "keytool",
            "-importcert",
            "-storepass",
            "Xq9Vz0018",
            "-keystore",
            "ks.jks",
        ],
        &["Xq9Vz0018"],
        &["-storepass", "ks.jks"],
    ),
    case(
        &[
            "keytool",
            "-storepasswd",
            "-new",
            "Xq9Vz0019",
            "-storepass",
            "Xq9Vz0020",
        ],
        &["Xq9Vz0019", "Xq9Vz0020"],
        &["-storepasswd"],
    ),
    case(
        &["gpg", "--batch", "--passphrase", "Xq9Vz0021", "-d", "x.gpg"],
        &["Xq9Vz0021"],
        &["--passphrase", "x.gpg"],
    ),
    case(
        &["app", "--key", "Xq9Vz0022Xq9Vz0022"],
        &["Xq9Vz0022"],
        &["--key"],
    ),
    case(
        &["app", "--license-key=Xq9Vz0023"],
        &["Xq9Vz0023"],
        &["--license-key="],
    ),
    case(
        &["app", "--credentials", "admin:Xq9Vz0024"],
        &["Xq9Vz0024"],
        &["--credentials"],
    ),
    case(
        &["terraform", "apply", "-var", "db_password=Xq9Vz0025"],
        &["Xq9Vz0025"],
        &["db_password="],
    ),
    case(
        &["terraform", "apply", "-var=db_password=Xq9Vz0026"],
        &["Xq9Vz0026"],
        &["-var=db_password="],
    ),
    case(
        &[
            "helm",
            "install",
            "x",
            "--set",
            "auth.rootPassword=Xq9Vz0027",
        ],
        &["Xq9Vz0027"],
        &["auth.rootPassword="],
    ),
    case(
        &["app", "--token", "ghp_Xq9Vz0028aaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        &["Xq9Vz0028"],
        &["ghp_…"],
    ),
    // Per-program short options.
    case(
        &["mysql", "-uroot", "-pXq9Vz0101", "shop"],
        &["Xq9Vz0101"],
        &["-uroot", "-p…", "shop"],
    ),
    case(
        &["mysql", "-uroot", "-p-Xq9Vz0102", "shop"],
        &["Xq9Vz0102"],
        &["shop"],
    ),
    case(
        &["mysql", "--password=Xq9Vz0103", "shop"],
        &["Xq9Vz0103"],
        &["shop"],
    ),
    case(
        &["/usr/bin/mariadb", "-h", "db", "-pXq9Vz0104"],
        &["Xq9Vz0104"],
        &["-h", "db"],
    ),
    case(
        &["mysqldump", "-uroot", "-pXq9Vz0105", "--all-databases"],
        &["Xq9Vz0105"],
        &["--all-databases"],
    ),
    case(
        &["mysqladmin", "-uroot", "password", "Xq9Vz0106"],
        &["Xq9Vz0106"],
        &["password"],
    ),
    case(&["mysql", "-p", "shop"], &[], &["-p", "shop"]),
    case(
        &["sshpass", "-p", "Xq9Vz0107", "ssh", "deploy@web1"],
        &["Xq9Vz0107"],
        &["ssh", "deploy@web1"],
    ),
    case(
        &["sshpass", "-pXq9Vz0108", "scp", "a", "b:"],
        &["Xq9Vz0108"],
        &["scp"],
    ),
    case(
        &["sshpass", "-p", "-Xq9Vz0109", "ssh", "h"],
        &["-Xq9Vz0109"],
        &["ssh"],
    ),
    case(
        &["redis-cli", "-h", "cache", "-a", "Xq9Vz0110", "ping"],
        &["Xq9Vz0110"],
        &["cache", "ping"],
    ),
    case(
        &["redis-cli", "AUTH", "Xq9Vz0111"],
        &["Xq9Vz0111"],
        &["AUTH"],
    ),
    case(
        &["redis-cli", "CONFIG", "SET", "requirepass", "Xq9Vz0112"],
        &["Xq9Vz0112"],
        &["requirepass"],
    ),
    case(
        &["redis-cli", "-u", "redis://:Xq9Vz0113@cache:6379/0"],
        &["Xq9Vz0113"],
        &["@cache:6379/0"],
    ),
    case(
        &["curl", "-u", "admin:Xq9Vz0114", "https://api.example.com/x"],
        &["Xq9Vz0114"],
        &["admin:", "https://api.example.com/x"],
    ),
    case(
        &[
            "curl",
            "--user",
            "admin:Xq9Vz0115",
            "https://api.example.com/x",
        ],
        &["Xq9Vz0115"],
        &["admin:"],
    ),
    case(
        &["curl", "-uadmin:Xq9Vz0116", "https://x"],
        &["Xq9Vz0116"],
        &["-uadmin:"],
    ),
    case(
        &["curl", "-u", "sk_test_Xq9Vz0117:", "https://api.stripe.com"],
        &["Xq9Vz0117"],
        &["https://api.stripe.com"],
    ),
    case(
        &["curl", "-H", "Authorization: Bearer Xq9Vz0118", "https://x"],
        &["Xq9Vz0118"],
        &["Authorization: Bearer"],
    ),
    case(
        &["curl", "-H", "Authorization: Basic Xq9Vz0119=", "https://x"],
        &["Xq9Vz0119"],
        &["Authorization: Basic"],
    ),
    case(
        &["curl", "-H", "authorization:token Xq9Vz0120", "https://x"],
        &["Xq9Vz0120"],
        &["authorization:"],
    ),
    case(
        &["curl", "-H", "X-Api-Key: Xq9Vz0121", "https://x"],
        &["Xq9Vz0121"],
        &["X-Api-Key:"],
    ),
    case(
        &[
            "curl",
            "-H",
            "Cookie: session=Xq9Vz0122; theme=dark",
            "https://x",
        ],
        &["Xq9Vz0122"],
        &["Cookie:"],
    ),
    case(
        &[
            "curl",
            "-H",
            "Proxy-Authorization: Basic Xq9Vz0123",
            "https://x",
        ],
        &["Xq9Vz0123"],
        &["Proxy-Authorization: Basic"],
    ),
    case(
        &["curl", "-H", "PRIVATE-TOKEN: Xq9Vz0124", "https://gitlab"],
        &["Xq9Vz0124"],
        &["PRIVATE-TOKEN:"],
    ),
    case(
        &["curl", "-H", "X-Vault-Token: Xq9Vz0125", "https://vault"],
        &["Xq9Vz0125"],
        &["X-Vault-Token:"],
    ),
    case(
        &["curl", "--oauth2-bearer", "Xq9Vz0126", "https://x"],
        &["Xq9Vz0126"],
        &["--oauth2-bearer"],
    ),
    case(
        &["curl", "-b", "sid=Xq9Vz0127", "https://x"],
        &["Xq9Vz0127"],
        &["sid="],
    ),
    case(
        &["curl", "-b", "cookies.txt", "https://x"],
        &[],
        &["cookies.txt"],
    ),
    case(
        &["curl", "-E", "client.pem:Xq9Vz0128", "https://x"],
        &["Xq9Vz0128"],
        &["client.pem:"],
    ),
    case(
        &[
            "curl",
            "-d",
            "grant_type=password&username=ana&password=Xq9Vz0129",
            "https://idp/token",
        ],
        &["Xq9Vz0129"],
        &["grant_type=password&username=ana&password="],
    ),
    case(
        &[
            "curl",
            "-d",
            r#"{"client_id":"app","client_secret":"Xq9Vz0130"}"#,
            "https://idp",
        ],
        &["Xq9Vz0130"],
        &[r#""client_id":"app""#],
    ),
    case(
        &[
            "curl",
            "-d",
            r#"{ "password" : "Fk3\"Pw0131" , "user": "ana" }"#,
            "https://x",
        ],
        &["Pw0131"],
        &[r#""user": "ana""#],
    ),
    case(
        &["curl", "--data-urlencode", "token=Xq9Vz0132", "https://x"],
        &["Xq9Vz0132"],
        &["token="],
    ),
    case(
        &[
            "curl",
            "-x",
            "http://proxyuser:Xq9Vz0133@proxy:3128",
            "https://x",
        ],
        &["Xq9Vz0133"],
        &["proxyuser:", "@proxy:3128"],
    ),
    case(
        &["curl", "-U", "proxyuser:Xq9Vz0134", "https://x"],
        &["Xq9Vz0134"],
        &["proxyuser:"],
    ),
    case(
        &["wget", "--password=Xq9Vz0135", "--user=ana", "ftp://x/f"],
        &["Xq9Vz0135"],
        &["--user=ana"],
    ),
    case(
        &["wget", "--http-password", "Xq9Vz0136", "https://x"],
        &["Xq9Vz0136"],
        &["--http-password"],
    ),
    case(
        &[
            "wget",
            "--header=Authorization: Bearer Xq9Vz0137",
            "https://x",
        ],
        &["Xq9Vz0137"],
        &["Bearer"],
    ),
    case(
        &["wget", "--ask-password", "https://x/file"],
        &[],
        &["https://x/file"],
    ),
    case(
        &["http", "-a", "ana:Xq9Vz0138", "GET", "https://x"],
        &["Xq9Vz0138"],
        &["ana:"],
    ),
    case(
        &["psql", "postgresql://app:Xq9Vz0139@db.internal:5432/app"],
        &["Xq9Vz0139"],
        &["postgresql://app:", "@db.internal:5432/app"],
    ),
    case(
        &["psql", "host=db user=app password=Xq9Vz0140 dbname=app"],
        &["Xq9Vz0140"],
        &["host=db user=app password=", "dbname=app"],
    ),
    case(
        &[
            "psql",
            "-d",
            "host=db password='Xq9Vz0141 x' sslmode=require",
        ],
        &["Xq9Vz0141"],
        &["sslmode=require"],
    ),
    case(&["psql", "--password", "shop"], &[], &["shop"]),
    case(&["pg_dump", "-W", "-h", "db", "shop"], &[], &["shop"]),
    case(
        &["htpasswd", "-b", "/etc/nginx/.htpasswd", "ana", "Xq9Vz0142"],
        &["Xq9Vz0142"],
        &["/etc/nginx/.htpasswd", "ana"],
    ),
    case(
        &["htpasswd", "-bcB", "users", "ana", "Xq9Vz0143"],
        &["Xq9Vz0143"],
        &["users", "ana"],
    ),
    case(
        &["htpasswd", "-nb", "ana", "Xq9Vz0144"],
        &["Xq9Vz0144"],
        &["ana"],
    ),
    case(&["htpasswd", "-c", "users", "ana"], &[], &["users", "ana"]),
    case(
        &[
            "openssl",
            "pkcs12",
            "-export",
            "-passout",
            "pass:Xq9Vz0145",
            "-out",
            "a.p12",
        ],
        &["Xq9Vz0145"],
        &["pass:", "a.p12"],
    ),
    case(
        &[
            "openssl",
            "rsa",
            "-passin",
            "pass:Xq9Vz0146",
            "-in",
            "k.pem",
        ],
        &["Xq9Vz0146"],
        &["pass:"],
    ),
    case(
        &["openssl", "rsa", "-passin", "env:KEYPASS", "-in", "k.pem"],
        &[],
        &["env:KEYPASS"],
    ),
    case(
        &[
            "openssl",
            "rsa",
            "-passin",
            "file:/run/pass",
            "-in",
            "k.pem",
        ],
        &[],
        &["file:/run/pass"],
    ),
    case(
        &[
            "openssl",
            "enc",
            "-aes-256-cbc",
            "-k",
            "Xq9Vz0147",
            "-in",
            "f",
        ],
        &["Xq9Vz0147"],
        &["-aes-256-cbc"],
    ),
    case(
        &[
            "openssl",
            "enc",
            "-aes-256-cbc",
            "-K",
            "00112233445566778899aabbccddeeff",
            "-iv",
            "00",
        ],
        &["00112233445566778899aabbccddeeff"],
        &["-iv"],
    ),
    case(
        &["openssl", "dgst", "-sha256", "-hmac", "Xq9Vz0148", "f"],
        &["Xq9Vz0148"],
        &["-sha256"],
    ),
    case(
        &[
            "git",
            "-c",
            "http.extraHeader=Authorization: Basic Xq9Vz0149",
            "clone",
            "https://github.com/o/r",
        ],
        &["Xq9Vz0149"],
        &[
            "http.extraHeader=Authorization: Basic",
            "https://github.com/o/r",
        ],
    ),
    case(
        &[
            "git",
            "clone",
            "https://x-access-token:Xq9Vz0150@github.com/o/r.git",
        ],
        &["Xq9Vz0150"],
        &["x-access-token:", "@github.com/o/r.git"],
    ),
    case(
        &[
            "git",
            "push",
            "https://oauth2:glpat-Xq9Vz0151aaaaaaaaaaaa@gitlab.com/o/r.git",
        ],
        &["Xq9Vz0151"],
        &["@gitlab.com/o/r.git"],
    ),
    case(
        &["git", "config", "--global", "user.password", "Xq9Vz0152"],
        &["Xq9Vz0152"],
        &["user.password"],
    ),
    case(
        &[
            "docker",
            "login",
            "-u",
            "ci",
            "-p",
            "Xq9Vz0153",
            "registry.example.com",
        ],
        &["Xq9Vz0153"],
        &["ci", "registry.example.com"],
    ),
    case(
        &[
            "docker",
            "login",
            "--password",
            "Xq9Vz0154",
            "r.example.com",
        ],
        &["Xq9Vz0154"],
        &["r.example.com"],
    ),
    case(
        &[
            "docker",
            "login",
            "--password-stdin",
            "-u",
            "ci",
            "r.example.com",
        ],
        &[],
        &["r.example.com", "ci"],
    ),
    case(
        &[
            "docker",
            "run",
            "-p",
            "8080:80",
            "-e",
            "DB_PASSWORD=Xq9Vz0155",
            "nginx",
        ],
        &["Xq9Vz0155"],
        &["8080:80", "DB_PASSWORD=", "nginx"],
    ),
    case(
        &["podman", "login", "-p", "Xq9Vz0156", "quay.io"],
        &["Xq9Vz0156"],
        &["quay.io"],
    ),
    case(
        &["docker", "build", "--build-arg", "NPM_TOKEN=Xq9Vz0157", "."],
        &["Xq9Vz0157"],
        &["NPM_TOKEN="],
    ),
    case(
        &[
            "skopeo",
            "copy",
            "--src-creds",
            "ci:Xq9Vz0158",
            "docker://a",
            "docker://b",
        ],
        &["Xq9Vz0158"],
        &["ci:", "docker://a"],
    ),
    case(
        &["kubectl", "--token", "Xq9Vz0159", "get", "pods"],
        &["Xq9Vz0159"],
        &["get", "pods"],
    ),
    case(
        &["kubectl", "--token=Xq9Vz0160", "get", "pods"],
        &["Xq9Vz0160"],
        &["get", "pods"],
    ),
    case(
        &[
            "kubectl",
            "create",
            "secret",
            "generic",
            "db",
            "--from-literal=pw=Xq9Vz0161",
        ],
        &["Xq9Vz0161"],
        &["--from-literal=pw="],
    ),
    case(
        &[
            "kubectl",
            "config",
            "set-credentials",
            "ci",
            "--password=Xq9Vz0162",
        ],
        &["Xq9Vz0162"],
        &["set-credentials"],
    ),
    case(
        &[
            "aws",
            "configure",
            "set",
            "aws_secret_access_key",
            "Xq9Vz0163",
        ],
        &["Xq9Vz0163"],
        &["aws_secret_access_key"],
    ),
    case(
        &[
            "aws",
            "ssm",
            "put-parameter",
            "--name",
            "/db/pw",
            "--value",
            "Xq9Vz0164",
            "--type",
            "SecureString",
        ],
        &["Xq9Vz0164"],
        &["/db/pw", "SecureString"],
    ),
    case(
        &[
            "aws",
            "secretsmanager",
            "create-secret",
            "--name",
            "db",
            "--secret-string",
            "Xq9Vz0165",
        ],
        &["Xq9Vz0165"],
        &["create-secret"],
    ),
    case(
        &[
            "az",
            "login",
            "--service-principal",
            "-u",
            "app",
            "-p",
            "Xq9Vz0166",
            "--tenant",
            "t",
        ],
        &["Xq9Vz0166"],
        &["--tenant"],
    ),
    case(
        &["vault", "login", "hvs.Xq9Vz0167"],
        &["Xq9Vz0167"],
        &["login"],
    ),
    case(&["vault", "login", "Xq9Vz0168"], &["Xq9Vz0168"], &["login"]),
    case(
        &[
            "vault",
            "kv",
            "put",
            "secret/app",
            "api=Xq9Vz0169",
            "password=Xq9Vz0170",
        ],
        &["Xq9Vz0169", "Xq9Vz0170"],
        &["secret/app", "api="],
    ),
    case(
        &[
            "vault",
            "write",
            "auth/approle/login",
            "role_id=r1",
            "secret_id=Xq9Vz0171",
        ],
        &["Xq9Vz0171"],
        &["auth/approle/login", "role_id="],
    ),
    case(
        &[
            "npm",
            "config",
            "set",
            "//registry.npmjs.org/:_authToken",
            "Xq9Vz0172",
        ],
        &["Xq9Vz0172"],
        &["//registry.npmjs.org/:_authToken"],
    ),
    case(
        &[
            "npm",
            "publish",
            "--//registry.npmjs.org/:_authToken=Xq9Vz0173",
        ],
        &["Xq9Vz0173"],
        &["publish"],
    ),
    case(
        &["gh", "secret", "set", "API", "--body", "Xq9Vz0174"],
        &["Xq9Vz0174"],
        &["API"],
    ),
    case(
        &["dotnet", "user-secrets", "set", "Db:Conn", "Xq9Vz0175"],
        &["Xq9Vz0175"],
        &["Db:Conn"],
    ),
    case(
        &["heroku", "config:set", "STRIPE=Xq9Vz0176"],
        &["Xq9Vz0176"],
        &["STRIPE="],
    ),
    case(
        &["mongosh", "-u", "admin", "-p", "Xq9Vz0177", "mongodb://db"],
        &["Xq9Vz0177"],
        &["admin", "mongodb://db"],
    ),
    case(
        &[
            "mongodump",
            "--uri",
            "mongodb+srv://admin:Xq9Vz0178@cluster0.x.net/db",
        ],
        &["Xq9Vz0178"],
        &["mongodb+srv://admin:", "@cluster0.x.net/db"],
    ),
    case(
        &[
            "sqlcmd",
            "-S",
            "db",
            "-U",
            "sa",
            "-P",
            "Xq9Vz0179",
            "-Q",
            "select 1",
        ],
        &["Xq9Vz0179"],
        &["sa", "select 1"],
    ),
    case(
        &["sqlplus", "-s", "scott/Xq9Vz0180@orcl", "@run.sql"],
        &["Xq9Vz0180"],
        &["scott/", "@orcl", "@run.sql"],
    ),
    case(
        &["expdp", "userid=system/Xq9Vz0181", "schemas=hr"],
        &["Xq9Vz0181"],
        &["userid=system/", "schemas=hr"],
    ),
    case(
        &[
            "ldapsearch",
            "-x",
            "-D",
            "cn=admin,dc=ex",
            "-w",
            "Xq9Vz0182",
            "-b",
            "dc=ex",
        ],
        &["Xq9Vz0182"],
        &["cn=admin,dc=ex"],
    ),
    case(
        &[
            "ldappasswd",
            "-x",
            "-a",
            "Xq9Vz0183",
            "-s",
            "Xq9Vz0184",
            "uid=ana",
        ],
        &["Xq9Vz0183", "Xq9Vz0184"],
        &["uid=ana"],
    ),
    case(
        &["smbclient", "//fs/share", "Xq9Vz0185", "-U", "ana"],
        &["Xq9Vz0185"],
        &["//fs/share", "ana"],
    ),
    case(
        &["smbclient", "-U", "ana%Xq9Vz0186", "//fs/share"],
        &["Xq9Vz0186"],
        &["ana%", "//fs/share"],
    ),
    case(
        &[
            "mount",
            "-t",
            "cifs",
            "-o",
            "username=ana,password=Xq9Vz0187,vers=3.0",
            "//fs/s",
            "/mnt",
        ],
        &["Xq9Vz0187"],
        &["username=ana,password=", ",vers=3.0", "/mnt"],
    ),
    case(
        &["zip", "-P", "Xq9Vz0188", "out.zip", "f"],
        &["Xq9Vz0188"],
        &["out.zip"],
    ),
    case(
        &["7z", "a", "-pXq9Vz0189", "out.7z", "f"],
        &["Xq9Vz0189"],
        &["out.7z"],
    ),
    case(
        &["unzip", "-P", "Xq9Vz0190", "in.zip"],
        &["Xq9Vz0190"],
        &["in.zip"],
    ),
    case(
        &["ssh-keygen", "-t", "ed25519", "-N", "Xq9Vz0191", "-f", "k"],
        &["Xq9Vz0191"],
        &["ed25519"],
    ),
    case(
        &["xfreerdp", "/u:ana", "/p:Xq9Vz0192", "/v:host"],
        &["Xq9Vz0192"],
        &["/u:ana", "/v:host"],
    ),
    case(
        &["plink", "-pw", "Xq9Vz0193", "ana@host"],
        &["Xq9Vz0193"],
        &["ana@host"],
    ),
    case(
        &["useradd", "-p", "$6$Xq9Vz0194$xyz", "ana"],
        &["Xq9Vz0194"],
        &["ana"],
    ),
    case(
        &[
            "ipmitool",
            "-I",
            "lanplus",
            "-H",
            "bmc",
            "-U",
            "root",
            "-P",
            "Xq9Vz0195",
            "power",
            "status",
        ],
        &["Xq9Vz0195"],
        &["power", "status"],
    ),
    case(
        &["lftp", "-u", "ana,Xq9Vz0196", "ftp.example.com"],
        &["Xq9Vz0196"],
        &["ana,", "ftp.example.com"],
    ),
    case(
        &[
            "nmcli",
            "dev",
            "wifi",
            "connect",
            "Home",
            "password",
            "Xq9Vz0197",
        ],
        &["Xq9Vz0197"],
        &["Home", "password"],
    ),
    case(
        &["wpa_passphrase", "Home", "Xq9Vz0198"],
        &["Xq9Vz0198"],
        &["Home"],
    ),
    case(
        &["etcdctl", "--user", "root:Xq9Vz0199", "get", "k"],
        &["Xq9Vz0199"],
        &["root:"],
    ),
    // NAME=VALUE, alone, with env, in command strings.
    case(
        &["env", "AWS_SECRET_ACCESS_KEY=Xq9Vz0201", "aws", "s3", "ls"],
        &["Xq9Vz0201"],
        &["AWS_SECRET_ACCESS_KEY=", "s3", "ls"],
    ),
    case(
        &["env", "GITHUB_TOKEN=Xq9Vz0202", "gh", "pr", "list"],
        &["Xq9Vz0202"],
        &["GITHUB_TOKEN=", "pr"],
    ),
    case(
        &["app", "PGPASSWORD=Xq9Vz0203"],
        &["Xq9Vz0203"],
        &["PGPASSWORD="],
    ),
    case(
        &["app", "MYSQL_PWD=Xq9Vz0204"],
        &["Xq9Vz0204"],
        &["MYSQL_PWD="],
    ),
    case(
        &["app", "OPENAI_API_KEY=Xq9Vz0205"],
        &["Xq9Vz0205"],
        &["OPENAI_API_KEY="],
    ),
    case(
        &["app", "STRIPE_KEY=Xq9Vz0206"],
        &["Xq9Vz0206"],
        &["STRIPE_KEY="],
    ),
    case(
        &["app", "DB_PASSWORD_PROD=Xq9Vz0207"],
        &["Xq9Vz0207"],
        &["DB_PASSWORD_PROD="],
    ),
    case(
        &["app", "DATABASE_URL=postgres://u:Xq9Vz0208@db/x"],
        &["Xq9Vz0208"],
        &["DATABASE_URL=postgres://u:", "@db/x"],
    ),
    case(
        &["app", "SSH_KEY=/home/ana/.ssh/id_ed25519"],
        &[],
        &["SSH_KEY=/home/ana/.ssh/id_ed25519"],
    ),
    case(
        &["sh", "-c", "mysql -uroot -pXq9Vz0209 shop < dump.sql"],
        &["Xq9Vz0209"],
        &["mysql -uroot -p", "shop < dump.sql"],
    ),
    case(
        &["bash", "-c", "export DB_PASSWORD='Xq9Vz0210 x'; ./migrate"],
        &["Xq9Vz0210"],
        &["export DB_PASSWORD=", "./migrate"],
    ),
    case(
        &["sh", "-c", "API_TOKEN=Xq9Vz0211 ./deploy.sh && echo done"],
        &["Xq9Vz0211"],
        &["API_TOKEN="],
    ),
    case(
        &[
            "sh",
            "-c",
            "cd /srv && API_TOKEN=Xq9Vz0219 ./deploy.sh && echo done",
        ],
        &["Xq9Vz0219"],
        &["cd /srv && API_TOKEN=", " ./deploy.sh && echo done"],
    ),
    case(
        &[
            "sh",
            "-c",
            "curl -s -H \"Authorization: Bearer Xq9Vz0212\" https://x | jq .",
        ],
        &["Xq9Vz0212"],
        &["| jq ."],
    ),
    case(
        &[
            "su",
            "-c",
            "sshpass -p Xq9Vz0213 rsync -a /src host:/dst",
            "deploy",
        ],
        &["Xq9Vz0213"],
        &["rsync -a /src host:/dst"],
    ),
    case(
        &["ssh", "web1", "redis-cli -a Xq9Vz0214 info"],
        &["Xq9Vz0214"],
        &["info"],
    ),
    case(
        &[
            "kubectl",
            "exec",
            "db-0",
            "--",
            "sh",
            "-c",
            "mysql -p'Xq9Vz0215' -e 'show databases'",
        ],
        &["Xq9Vz0215"],
        &["show databases"],
    ),
    case(
        &[
            "sudo",
            "-u",
            "postgres",
            "psql",
            "-c",
            "ALTER USER app PASSWORD 'Xq9Vz0216'",
        ],
        &["Xq9Vz0216"],
        &["ALTER USER app PASSWORD"],
    ),
    case(
        &["sudo", "-u", "app", "mysql", "-pXq9Vz0217"],
        &["Xq9Vz0217"],
        &["-u", "app"],
    ),
    case(
        &["timeout", "30", "sshpass", "-p", "Xq9Vz0218", "ssh", "h"],
        &["Xq9Vz0218"],
        &["30"],
    ),
    // URLs: userinfo and query strings.
    case(
        &["app", "amqp://guest:Xq9Vz0301@rabbit:5672/"],
        &["Xq9Vz0301"],
        &["amqp://guest:", "@rabbit:5672/"],
    ),
    case(
        &["app", "https://user:p%40ss-Xq9Vz0302@host/x"],
        &["Xq9Vz0302"],
        &["@host/x"],
    ),
    case(
        &["app", "https://u:Xq9Vz0303@x@host/path"],
        &["Xq9Vz0303"],
        &["@host/path"],
    ),
    case(
        &["rsync", "ana:Xq9Vz0304@backup.example.com::mod", "/dst"],
        &["Xq9Vz0304"],
        &["@backup.example.com::mod"],
    ),
    case(
        &["app", "https://api.example.com/v1?token=Xq9Vz0305&page=2"],
        &["Xq9Vz0305"],
        &["https://api.example.com/v1?token=", "&page=2"],
    ),
    case(
        &["app", "https://x/cb?code=Xq9Vz0306&state=abc"],
        &["Xq9Vz0306"],
        &["&state=abc"],
    ),
    case(
        &["app", "https://x/?access_token=Xq9Vz0307"],
        &["Xq9Vz0307"],
        &["access_token="],
    ),
    case(
        &[
            "curl",
            "https://b.s3.amazonaws.com/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Signature=Xq9Vz0308&X-Amz-Security-Token=Xq9Vz0309",
        ],
        &["Xq9Vz0308", "Xq9Vz0309"],
        &["X-Amz-Algorithm=AWS4-HMAC-SHA256"],
    ),
    case(
        &[
            "azcopy",
            "copy",
            "https://a.blob.core.windows.net/c?sv=2022&sig=Xq9Vz0310%3D",
            ".",
        ],
        &["Xq9Vz0310"],
        &["sv=2022&sig="],
    ),
    case(
        &[
            "app",
            "https://maps.googleapis.com/x?key=AIzaXq9Vz0311aaaaaaaaaaaaaaaaaaaaaaaaaa",
        ],
        &["Xq9Vz0311"],
        &["key="],
    ),
    case(
        &["app", "jdbc:mysql://db/x?user=app&password=Xq9Vz0312"],
        &["Xq9Vz0312"],
        &["user=app&password="],
    ),
    case(
        &["app", "Server=db;Database=x;User Id=sa;Password=Xq9Vz0313;"],
        &["Xq9Vz0313"],
        &["Server=db;Database=x;User Id=sa;Password=", ";"],
    ),
    case(
        &["app", "DSN=x;UID=sa;PWD=Xq9Vz0314"],
        &["Xq9Vz0314"],
        &["DSN=x;UID=sa;PWD="],
    ),
    // Key/value text.
    case(
        &[
            "app",
            "--config",
            r#"{"db":{"password":"Xq9Vz0401"},"port":5432}"#,
        ],
        &["Xq9Vz0401"],
        &[r#""port":5432"#],
    ),
    case(
        &["app", r#"{"apiKey": "Xq9Vz0402", "region": "eu"}"#],
        &["Xq9Vz0402"],
        &[r#""region": "eu""#],
    ),
    case(
        &["app", "-e", "password: Xq9Vz0403\nuser: ana"],
        &["Xq9Vz0403"],
        &["user: ana"],
    ),
    case(
        &[
            "ansible-playbook",
            "-e",
            "ansible_become_password=Xq9Vz0404",
            "site.yml",
        ],
        &["Xq9Vz0404"],
        &["site.yml"],
    ),
    case(
        &[
            "ansible",
            "all",
            "-m",
            "user",
            "-a",
            "name=ana password=Xq9Vz0405 state=present",
        ],
        &["Xq9Vz0405"],
        &["name=ana", "state=present"],
    ),
    case(
        &["app", "client_secret=Xq9Vz0406"],
        &["Xq9Vz0406"],
        &["client_secret="],
    ),
    case(
        &["app", "--opts", "token=Xq9Vz0407,ttl=60"],
        &["Xq9Vz0407"],
        &["--opts", "token="],
    ),
    case(
        &["app", "--opts", "ttl=60,token=Xq9Vz0408"],
        &["Xq9Vz0408"],
        &["ttl=60,token="],
    ),
    // Token shapes, in no context.
    case(&["app", "AKIAXQ9VZ0501AAAAAAA"], &["XQ9VZ0501"], &["AKIA…"]),
    case(
        &["app", "ghp_Xq9Vz0502aaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        &["Xq9Vz0502"],
        &["ghp_…"],
    ),
    case(
        &["app", "github_pat_Xq9Vz0503aaaaaaaaaaaaaaaaaa"],
        &["Xq9Vz0503"],
        &["github_pat_…"],
    ),
    case(
        &["app", "glpat-Xq9Vz0504aaaaaaaaaaaaa"],
        &["Xq9Vz0504"],
        &["glpat-…"],
    ),
    case(
        &["app", "xoxb-Xq9Vz0505-aaaaaaaaaa"],
        &["Xq9Vz0505"],
        &["xoxb-…"],
    ),
    case(
        &["app", "sk_live_Xq9Vz0506aaaaaaaaaaaa"],
        &["Xq9Vz0506"],
        &["sk_live_…"],
    ),
    case(
        &["app", "hvs.Xq9Vz0507aaaaaaaaaaaaaaa"],
        &["Xq9Vz0507"],
        &["hvs.…"],
    ),
    case(
        &["app", "npm_Xq9Vz0508aaaaaaaaaaaaaaaaaaaaaaaaaaa"],
        &["Xq9Vz0508"],
        &["npm_…"],
    ),
    case(
        &["app", "sk-ant-Xq9Vz0509aaaaaaaaaaaaaaaaaa"],
        &["Xq9Vz0509"],
        &["sk-ant-…"],
    ),
    case(
        &[
            "app",
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJGazNQdzA1MTAifQ.Xq9Vz0510sig",
        ],
        &["Xq9Vz0510", "eyJzdWIiOiJGazNQdzA1MTAifQ"],
        &["app"],
    ),
    case(
        &[
            "app",
            "--bundle",
            "-----BEGIN PRIVATE KEY-----\nXq9Vz0511AAAA\n-----END PRIVATE KEY-----",
        ],
        &["Xq9Vz0511"],
        &["-----BEGIN PRIVATE KEY-----", "-----END PRIVATE KEY-----"],
    ),
    case(
        &[
            "app",
            "--key",
            "-----BEGIN EC PRIVATE KEY-----\nXq9Vz0512AAAA",
        ],
        &["Xq9Vz0512"],
        &["--key"],
    ),
    // The fallback: a credential in no context.
    case(
        &["app", "--foo", "q8Xv2Lp9Zk4Rt7Wm3Nb6Yc1D"],
        &["q8Xv2Lp9Zk4Rt7Wm3Nb6Yc1D"],
        &["--foo"],
    ),
    case(
        &["deploy", "q9Zr/Xk4Lm2Wp8Tn+Bv6Hc3Jd7Fs1Gy5Ua0Ke2R"],
        &["q9Zr/Xk", "Lm2Wp8Tn", "Bv6Hc3Jd7Fs1Gy5Ua0Ke2R"],
        &["deploy"],
    ),
];

fn redactor() -> Redactor {
    Redactor::default()
}

fn owned(argv: &[&str]) -> Vec<String> {
    argv.iter().map(|s| s.to_string()).collect()
}

/// Everything printed of a command line: its arguments and matches.
fn printed(r: &RedactedArgs) -> String {
    let matches: Vec<&str> = r.found.iter().map(|f| f.redacted.as_str()).collect();
    format!("{}\n{}", r.args.join("\n"), matches.join("\n"))
}

#[test]
fn every_form_hides_its_value_and_keeps_the_rest() {
    let r = redactor();
    assert!(CASES.len() >= 150, "{} cases", CASES.len());
    let mut failures = Vec::new();
    for c in CASES {
        let out = r.argv(&owned(c.argv), false);
        let text = printed(&out);
        for planted in c.planted {
            if text.contains(planted) {
                failures.push(format!("{:?}: {planted} leaked:\n{text}", c.argv));
            }
        }
        for kept in c.kept {
            if !text.contains(kept) {
                failures.push(format!("{:?}: {kept:?} not kept:\n{text}", c.argv));
            }
        }
        if !c.planted.is_empty() && out.found.is_empty() {
            failures.push(format!("{:?}: nothing reported", c.argv));
        }
        if c.planted.is_empty() && out.args != owned(c.argv) {
            failures.push(format!("{:?}: changed: {:?}", c.argv, out.args));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// What the rules change in command lines that hold no secret: those a
/// build on this project's host ran (`build_host.jsonl`: rustc, cc, cargo,
/// git, secretmon… as read from /proc/*/cmdline), and typical long-running
/// processes of servers and desktops (`servers.jsonl`: systemd, kubelet,
/// the Kubernetes control plane, databases, Chrome, Java, VS Code…).
fn changed_args(fixture: &str) -> (Vec<String>, usize) {
    let r = redactor();
    let mut changed = Vec::new();
    let mut total = 0;
    for line in fixture.lines() {
        let argv: Vec<String> = serde_json::from_str(line).expect("a JSON array of strings");
        let out = r.argv(&argv, false);
        for (a, b) in argv.iter().zip(&out.args) {
            total += 1;
            if a != b {
                changed.push(format!("{a:?} -> {b:?}"));
            }
        }
    }
    (changed, total)
}

#[test]
fn real_command_lines_stay_readable() {
    let (build, build_total) = changed_args(include_str!("fixtures/build_host.jsonl"));
    // One commit message says `--set KEY=VALUE`: a secret-named key, and
    // its value is hidden, as it would be on a real command line.
    assert_eq!(build.len(), 1, "{build:#?}");
    assert!(build[0].contains("KEY=…"), "{build:#?}");
    assert!(build_total > 4000, "{build_total}");
    let (servers, servers_total) = changed_args(include_str!("fixtures/servers.jsonl"));
    assert_eq!(servers, Vec::<String>::new(), "of {servers_total}");
}

#[test]
fn kinds_say_which_rule_fired_and_matches_stay_short() {
    let r = redactor();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["mysql", "-pXq9Vz0601"], "program_flag", "-p…"),
        (
            &["htpasswd", "-b", "f", "ana", "Xq9Vz0602"],
            "program_argument",
            "…",
        ),
        (&["app", "--token", "Xq9Vz0603"], "secret_flag", "--token …"),
        (
            &["app", "--password=Xq9Vz0604"],
            "secret_flag",
            "--password=…",
        ),
        (
            &["env", "DB_PASSWORD=Xq9Vz0605", "x"],
            "secret_assignment",
            "DB_PASSWORD=…",
        ),
        (
            &["psql", "postgres://app:Xq9Vz0606@db/x"],
            "url_password",
            "postgres://app:…",
        ),
        (
            &["curl", "https://x/?token=Xq9Vz0607"],
            "url_query",
            "https://x/?token=…",
        ),
        (
            &["curl", "-H", "Authorization: Bearer Xq9Vz0608"],
            "auth_header",
            "Authorization: Bearer …",
        ),
        (
            &["app", r#"{"client_secret":"Xq9Vz0609"}"#],
            "key_value",
            r#"{"client_secret":…"#,
        ),
        (
            &["app", "AKIAXQ9VZ0610AAAAAAA"],
            "aws_access_key_id",
            "AKIA…",
        ),
        (&["app", "q8Xv2Lp9Zk4Rt7Wm3Nb6Yc1D"], "high_entropy", "…"),
    ];
    for (argv, kind, shown) in cases {
        let out = r.argv(&owned(argv), false);
        assert_eq!(out.found.len(), 1, "{argv:?}: {:?}", out.found);
        assert_eq!(out.found[0].kind, *kind, "{argv:?}");
        assert_eq!(out.found[0].redacted, *shown, "{argv:?}");
        let planted = argv
            .iter()
            .position(|a| a.contains("Xq9Vz") || a.contains("XQ9VZ") || a.starts_with("q8X"));
        assert_eq!(Some(out.found[0].arg), planted, "{argv:?}");
    }
    // A long argument: the match shows what is just before the secret.
    let long = format!("{}&password=Xq9Vz0611", "x=1&".repeat(40));
    let out = r.argv(&owned(&["curl", "-d", &long]), false);
    assert_eq!(
        out.found[0].redacted.len(),
        40 + "…".len(),
        "{:?}",
        out.found
    );
    assert!(out.found[0].redacted.ends_with("&password=…"));
}

#[test]
fn the_policy_decides_what_args_show() {
    let argv = owned(&["app", "--token", "Xq9Vz0701", "-v"]);
    let redacted = Redactor::new(ArgsPolicy::Redacted, &[]).argv(&argv, false);
    assert_eq!(redacted.args, ["app", "--token", "…", "-v"]);
    let none = Redactor::new(ArgsPolicy::None, &[]).argv(&argv, false);
    assert!(none.args.is_empty());
    assert_eq!(none.found[0].kind, "secret_flag");
    assert_eq!(none.found[0].redacted, "…", "nothing of argv under `none`");
    let full = Redactor::new(ArgsPolicy::Full, &[]).argv(&argv, false);
    assert_eq!(full.args, argv, "raw under `full`");
    assert_eq!(full.found, redacted.found, "the finding is redacted still");
}

#[test]
fn the_configs_env_names_are_secret_names() {
    let argv = owned(&["app", "WALLET_SEED=Xq9Vz0801", "--wallet-seed=Xq9Vz0802"]);
    let builtin = Redactor::default().argv(&argv, false);
    assert_eq!(builtin.args, argv, "no secret name by itself");
    let extra = Redactor::new(ArgsPolicy::Redacted, &["*_SEED".to_string()]).argv(&argv, false);
    let text = printed(&extra);
    assert!(
        !text.contains("Xq9Vz0801") && !text.contains("Xq9Vz0802"),
        "{text}"
    );
}

#[test]
fn a_cut_argument_is_hidden_whole() {
    let r = redactor();
    // A token cut by the kernel no longer has its shape.
    let cut = "ghp_Xq9Vz0901aaaaaaaaaaa";
    let out = r.argv(&owned(&["git", "push", cut]), true);
    assert_eq!(out.args, ["git", "push", "…"]);
    assert!(
        out.found.is_empty(),
        "unknown, not a finding: {:?}",
        out.found
    );
    // A cut secret flag value is found, and hidden whole.
    let out = r.argv(&owned(&["app", "--password=Xq9Vz0902"]), true);
    assert_eq!(out.args, ["app", "…"]);
    assert_eq!(out.found[0].kind, "secret_flag");
    // Not cut: the same token is shown by its prefix.
    let whole = format!("ghp_Xq9Vz0903{}", "a".repeat(27));
    assert_eq!(
        r.argv(&owned(&["git", &whole]), false).args,
        ["git", "ghp_…"]
    );
}

#[test]
fn a_comm_the_process_chose_is_an_argument() {
    let r = redactor();
    // The kernel's name at exec, and thread names, are shown.
    assert_eq!(r.comm("python3", Some("python3")), "python3");
    for thread in [
        "tokio-runtime-w",
        "Chrome_IOThread",
        "ThreadPoolForeg",
        "pool-1-thread-1",
        "gmain",
        "C2 CompilerThre",
        "kworker/u8:2",
    ] {
        assert_eq!(r.comm(thread, Some("java")), thread);
    }
    // A name set to a credential (prctl, /proc/self/comm) is not.
    assert_eq!(r.comm("Qx7Lp2Zr9Wk4Tm6", Some("sh")), "…");
    assert_eq!(r.comm("ghp_Xk9mQ2pL7wR", None), "…");
    assert_eq!(r.comm("--token=Xq9Vz", None), "--token=…");
    // `none` shows only the kernel's name, `full` any.
    let none = Redactor::new(ArgsPolicy::None, &[]);
    assert_eq!(none.comm("sh", Some("sh")), "sh");
    assert_eq!(none.comm("gmain", Some("sh")), "…");
    let full = Redactor::new(ArgsPolicy::Full, &[]);
    assert_eq!(full.comm("Qx7Lp2Zr9Wk4Tm6", Some("sh")), "Qx7Lp2Zr9Wk4Tm6");
}

#[test]
fn a_memfd_name_is_the_process_own_text() {
    let r = redactor();
    assert_eq!(r.exe("/usr/bin/cat".into()), "/usr/bin/cat");
    assert_eq!(
        r.exe("/memfd:sealed-91173221a7ea (deleted)".into()),
        "/memfd:sealed-91173221a7ea (deleted)"
    );
    assert_eq!(
        r.exe("/memfd:Qx7Lp2Zr9Wk4Tm6Yv3B (deleted)".into()),
        "/memfd:… (deleted)"
    );
    assert_eq!(r.exe("/memfd:token=Xq9Vz1001".into()), "/memfd:token=…");
}

/// Random keys in no context: the share the fallback hides, by alphabet
/// and length, over a fixed pseudo-random sample (README states these).
#[test]
fn the_fallback_hides_random_keys() {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rate = |alphabet: &[u8], len: usize, min_len: usize| {
        let n = 5000;
        let hidden = (0..n)
            .filter(|_| {
                let key: String = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                    .collect();
                entropy::credential_runs(&key, min_len).first() == Some(&(0..len))
            })
            .count();
        hidden as f64 / f64::from(n)
    };
    for (alphabet, len, min_len, at_least) in [
        (ALNUM, 16, MIN_CREDENTIAL_LEN, 0.98),
        (ALNUM, 24, MIN_CREDENTIAL_LEN, 0.99),
        (BASE64, 24, MIN_CREDENTIAL_LEN, 0.95),
        (BASE64, 40, MIN_CREDENTIAL_LEN, 0.995),
        (ALNUM, 12, MIN_CREDENTIAL_LEN_IN_NAME, 0.95),
        (ALNUM, 15, MIN_CREDENTIAL_LEN_IN_NAME, 0.98),
    ] {
        let r = rate(alphabet, len, min_len);
        assert!(r >= at_least, "{len} of {}: {r}", alphabet.len());
    }
}
