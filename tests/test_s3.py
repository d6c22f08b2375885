"""Object storage access (animalclf.data.s3): what an ``s3://`` URI is, and the pyarrow filesystem
options read from the standard AWS variables."""

from animalclf.data import s3 as s3_access


def test_s3_uris_are_told_apart_and_stripped_to_bucket_and_prefix():
    assert s3_access.is_remote("s3://animals/photos") and s3_access.is_remote("s3://")
    for local in (None, "", "photos", "/data/s3://x", "S3://animals/p", "http://animals/p"):
        assert not s3_access.is_remote(local), local
    assert s3_access.strip("s3://animals/photos/") == "animals/photos"
    assert s3_access.strip("s3://animals") == "animals"


def test_endpoint_and_keys_from_the_standard_variables(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://wrong:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://minio.local:9000/")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
    opts = dict(s3_access.options_from_env())
    assert opts == {"endpoint_override": "minio.local:9000", "scheme": "https", "region": "us-east-1",
                    "access_key": "AK", "secret_key": "SK"}
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    assert "access_key" not in dict(s3_access.options_from_env())  # the SDK's own chain on each node


def test_region_alone_and_a_session_token_travel_with_the_keys(monkeypatch):
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SK")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "ST")
    assert dict(s3_access.options_from_env()) == {"region": "eu-west-1", "access_key": "AK", "secret_key": "SK",
                                                  "session_token": "ST"}
    monkeypatch.setenv("AWS_REGION", "us-west-2")  # AWS_REGION wins over AWS_DEFAULT_REGION
    monkeypatch.setenv("AWS_ENDPOINT_URL", "minio:9000")  # no scheme: https
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")  # a key id alone is not used
    assert dict(s3_access.options_from_env()) == {"endpoint_override": "minio:9000", "scheme": "https",
                                                  "region": "us-west-2"}


def test_client_env_is_this_process_aws_variables_as_they_are_now(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://first:1")
    monkeypatch.setenv("NOT_AWS", "x")
    assert s3_access.client_env()["AWS_ENDPOINT_URL"] == "http://first:1" and "NOT_AWS" not in s3_access.client_env()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://second:2")  # read again, never cached
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AK")
    assert {k: s3_access.client_env()[k] for k in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID")} == {
        "AWS_ENDPOINT_URL": "http://second:2", "AWS_ACCESS_KEY_ID": "AK"}
