use burn::tensor::{Int, Tensor, TensorData};
type B = burn_flex::Flex;
fn i(t: Tensor<B, 2, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec::<i64>().unwrap()
}
#[test]
fn probe() {
    let dev = Default::default();
    let (r, n) = (2usize, 40usize);
    let data: Vec<f32> = (0..r * n)
        .map(|i| {
            if i % 7 == 0 || i % 5 == 0 {
                9.0
            } else {
                (i % 3) as f32
            }
        })
        .collect();
    let t: Tensor<B, 2> = Tensor::from_data(TensorData::new(data.clone(), [r, n]), &dev);
    for k in [1usize, 3, 20, 39] {
        println!("k{k} all {:?}", i(t.clone().topk_with_indices(k, 1).1));
        for h in 0..r {
            println!(
                "k{k} row{h} {:?}",
                i(t.clone().narrow(0, h, 1).topk_with_indices(k, 1).1)
            );
        }
        println!(
            "k{k} neg all {:?}",
            i(t.clone().neg().topk_with_indices(k, 1).1)
        );
        for h in 0..r {
            println!(
                "k{k} neg row{h} {:?}",
                i(t.clone().narrow(0, h, 1).neg().topk_with_indices(k, 1).1)
            );
        }
    }
    println!("argmin all {:?}", i(t.clone().argmin(1)));
    println!("argmax all {:?}", i(t.clone().argmax(1)));
}
