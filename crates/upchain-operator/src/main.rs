fn main() {
    print!("{}", upchain_api::crd_yaml().unwrap());
}
